"""Score fusion: merge the cloud LLM's ranking of a cached candidate list with the SRM's scores.

Every fusion maps a batch of candidate lists to fused scores (higher = shown earlier):

    fused = fusion(llm_scores [U, N], srm_logits [U, N], valid [U, N], age [U]) -> [U, N]

`age` is each list's age: the clicks since it was made (0 on the step it arrives; None = 0).
A list goes stale as the user clicks on, so a fusion may trust the SRM more as it ages
(`AgeAlphaFusion`); the others ignore it.

`valid` marks the slots that may be shown: not padding (id 0) and not already in the user's
history (a clicked item is never recommended again). Invalid slots get `-inf`. Ranks are
taken among the valid slots only, so removing a clicked item moves the items below it up.

Conventions shared with `device.consistency`:
    * the LLM rank `j` of an item is its 0-based position among the valid slots in list
      order (lists arrive best first);
    * the SRM rank orders the valid slots by descending logit, ties kept in LLM order, so an
      SRM with no opinion agrees with the LLM;
    * the final order sorts by fused score, ties kept in LLM order.

Fusions are small frozen dataclasses, selectable by name through `FUSIONS` / `build_fusion`.

Letters used in shape comments:
    U  users (rows)     N  list length (slots, padding included)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from shared import registry
from shared.candidates import CandidateList

_BIG = 1e30  # stands in for ±inf / NaN logits so that sort keys stay finite
# First list age of each bucket of `AgeAlphaFusion`: 0, 1, 2–3, 4–6, 7+ clicks since the list
# was made (finer where lists are fresh, where most states of a low-rate device are not).
AGE_BUCKETS = (0, 1, 2, 4, 7)


def as_batch(values: Any, dtype: type = np.float64) -> np.ndarray:
    """A `[U, N]` array from a `[N]` or `[U, N]` array-like (torch tensors included)."""
    if hasattr(values, "detach"):  # a torch tensor; numpy never needs to import torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=dtype)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"expected a [N] or [U, N] array, got shape {array.shape}")
    return array


def valid_mask(items: Any, histories: Sequence[Iterable[int]] | None = None) -> np.ndarray:
    """Which slots may be shown: not padding and not in the user's history.

    Args:
        items: `[U, N]` (or `[N]`) candidate ids, 0 = padding.
        histories: per row, the items the user already clicked (None = no history).
    Returns:
        `[U, N]` bool.
    """
    items = as_batch(items, np.int64)
    valid = items != 0
    if histories is None:
        return valid
    if len(histories) != items.shape[0]:
        raise ValueError(f"got {len(histories)} histories for {items.shape[0]} candidate lists")
    for row, history in enumerate(histories):
        seen = history if isinstance(history, np.ndarray) else np.fromiter(history, np.int64)
        if seen.size:
            valid[row] &= ~np.isin(items[row], seen)
    return valid


def llm_ranks(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[U, N]` 0-based LLM rank of every valid slot (invalid: `N`) and `[U]` valid count: the
    LLM half of `list_ranks`, without sorting the SRM's logits (the fusions need only this)."""
    n = valid.sum(axis=1)
    return np.where(valid, np.cumsum(valid, axis=1) - 1, valid.shape[1]), n


def list_ranks(srm_logits: Any, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0-based LLM and SRM ranks of every valid slot; invalid slots get rank `N`.

    Args:
        srm_logits: `[U, N]` SRM logits of the listed items.
        valid: `[U, N]` bool, slots that take part.
    Returns:
        `(r_llm, r_srm, n)`: `[U, N]` int64 ranks and `[U]` number of valid slots.
    """
    logits = as_batch(srm_logits)
    valid = as_batch(valid, bool)
    if logits.shape != valid.shape:
        raise ValueError(f"srm_logits {logits.shape} and valid {valid.shape} differ in shape")
    width = valid.shape[1]
    r_llm, n = llm_ranks(valid)  # [U, N], [U]
    # Invalid slots sort last; a stable sort keeps LLM order among equal logits.
    clean = np.clip(logits, -_BIG, _BIG)  # ±inf as ±BIG; NaN (no opinion) as the worst
    key = np.where(valid, -np.where(np.isnan(clean), -_BIG, clean), np.inf)
    order = np.argsort(key, axis=1, kind="stable")  # [U, N] slot indices, best SRM first
    r_srm = np.empty_like(order)
    r_srm[np.arange(len(order))[:, None], order] = np.arange(width)  # the inverse permutation
    return r_llm, np.where(valid, r_srm, width), n


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1 / (1 + e^(−x)), computed without overflow for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)  # one division: the same bits as two


def as_ages(age: Any, rows: int) -> np.ndarray:
    """`[rows]` int64 list ages from None (all 0), a number, or one age per row."""
    ages = np.zeros(rows, dtype=np.int64) if age is None else np.asarray(age, dtype=np.int64)
    ages = np.broadcast_to(ages, (rows,)) if ages.ndim == 0 else ages
    if ages.shape != (rows,):
        raise ValueError(f"expected {rows} list ages, got shape {ages.shape}")
    return ages


class Fusion:
    """Base of the fusions: `__call__(llm_scores, srm_logits, valid, age) -> [U, N]` fused
    scores."""

    name: ClassVar[str] = ""

    def __call__(
        self, llm_scores: Any, srm_logits: Any, valid: np.ndarray, age: Any = None
    ) -> np.ndarray:
        llm = as_batch(llm_scores)
        srm = as_batch(srm_logits)
        valid = as_batch(valid, bool)
        if not llm.shape == srm.shape == valid.shape:
            raise ValueError(
                f"llm_scores {llm.shape}, srm_logits {srm.shape} and valid {valid.shape} "
                "must have the same shape"
            )
        fused = self.fuse(llm, srm, valid, as_ages(age, len(llm)))  # [U, N]
        return np.where(valid, fused, -np.inf)

    def fuse(
        self, llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
    ) -> np.ndarray:
        """Fused scores of every slot (invalid slots are masked by the caller); `age` `[U]`."""
        raise NotImplementedError


@dataclass(frozen=True)
class RankSigmoidFusion(Fusion):
    """LSC4Rec's fusion: `α·(1 − j/N) + (1 − α)·σ(s)`.

    `j` is the 0-based LLM rank among the valid slots, `N` the number of valid slots, `s`
    the SRM logit. The LLM term runs from 1 (top) down to 1/N; the SRM term is a probability.
    """

    name: ClassVar[str] = "lsc4rec"
    alpha: float = 0.5  # weight of the LLM rank term; LSC4Rec's headline setting

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def fuse(
        self, llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
    ) -> np.ndarray:
        r_llm, n = llm_ranks(valid)
        rank_term = 1.0 - r_llm / np.maximum(n, 1)[:, None]  # [U, N]
        return self.alpha * rank_term + (1.0 - self.alpha) * sigmoid(srm)


@dataclass(frozen=True)
class AgeAlphaFusion(Fusion):
    """LSC4Rec's fusion with one α per list age: `α(a)·(1 − j/N) + (1 − α(a))·σ(s)`.

    `a` is the list's age (clicks since it was made). Ages fall into buckets that start at
    `ages` (the last bucket is open-ended); bucket `b` uses `alphas[b]`. A fresh list is the
    LLM's best guess; an old one misses the clicks since, which the SRM has seen, so the α
    chosen on validation typically falls with age. Equal alphas are LSC4Rec's fusion.
    """

    name: ClassVar[str] = "age_lsc4rec"
    alphas: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5, 0.5)  # weight of the LLM rank per bucket
    ages: tuple[int, ...] = AGE_BUCKETS  # first age of each bucket, increasing, from 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "ages", tuple(int(a) for a in self.ages))
        if len(self.alphas) != len(self.ages) or not self.ages:
            raise ValueError(f"need one alpha per age bucket: {self.alphas} for {self.ages}")
        if self.ages[0] != 0 or any(b <= a for a, b in zip(self.ages, self.ages[1:])):
            raise ValueError(f"age buckets must start at 0 and increase, got {self.ages}")
        if not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas must be in [0, 1], got {self.alphas}")

    def alpha_of(self, age: np.ndarray) -> np.ndarray:
        """α for each list age `[U]`."""
        bucket = np.searchsorted(self.ages, np.maximum(age, 0), side="right") - 1
        return np.asarray(self.alphas)[bucket]

    def fuse(
        self, llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
    ) -> np.ndarray:
        r_llm, n = llm_ranks(valid)
        rank_term = 1.0 - r_llm / np.maximum(n, 1)[:, None]  # [U, N]
        alpha = self.alpha_of(age)[:, None]  # [U, 1]
        return alpha * rank_term + (1.0 - alpha) * sigmoid(srm)


# The learned fusion's per-candidate features: both models' views of the item in its list,
# and the same four scaled by the list's age (min(age, AGE_CAP) / AGE_CAP), so that how much
# each view counts can change as the list ages.
BASE_FEATURES = ("llm_rank", "llm_logprob", "srm_prob", "srm_rank")
FUSION_FEATURES = BASE_FEATURES + tuple(f"age*{name}" for name in BASE_FEATURES)
AGE_CAP = 10  # ages at or past this count as this old


def fusion_features(
    llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
) -> np.ndarray:
    """`[U, N, F]` the `FUSION_FEATURES` of every slot (values in [0, 1]; any at invalid
    slots): LLM rank term `1 − j/n`, the LLM log-probability min-max scaled in the list,
    `σ(s)`, SRM rank term `1 − r/n`, then each times the scaled age."""
    r_llm, r_srm, n = list_ranks(srm, valid)
    count = np.maximum(n, 1)[:, None]
    base = np.stack(
        [1.0 - r_llm / count, _minmax(llm, valid), sigmoid(srm), 1.0 - r_srm / count], axis=-1
    )  # [U, N, 4]
    scaled = (np.minimum(np.maximum(age, 0), AGE_CAP) / AGE_CAP)[:, None, None]  # [U, 1, 1]
    return np.concatenate([base, base * scaled], axis=-1)


@dataclass(frozen=True)
class LearnedFusion(Fusion):
    """A linear scorer over `FUSION_FEATURES`: `w · φ(slot)`, one dot product per candidate.

    The weights are fitted on the validation stream to put the clicked item first (listwise
    softmax loss; `simulations.request_rate.fusion_fit`). The age terms let it move weight
    from the LLM's order to the SRM's as the list ages, by as much as the data says.
    """

    name: ClassVar[str] = "learned"
    weights: tuple[float, ...] = (1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # LSC4Rec α = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if len(self.weights) != len(FUSION_FEATURES):
            raise ValueError(
                f"need {len(FUSION_FEATURES)} weights ({', '.join(FUSION_FEATURES)}), "
                f"got {len(self.weights)}"
            )
        if not all(np.isfinite(self.weights)):
            raise ValueError(f"weights must be finite, got {self.weights}")

    def fuse(
        self, llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
    ) -> np.ndarray:
        # `fusion_features(...) @ weights`, without building the [U, N, 8] array: each age
        # term folds into its view's weight, w_k + scaled_age · w_{k+4} (a device runs this
        # per click; the training code builds the features).
        w = np.asarray(self.weights)
        scaled = np.minimum(np.maximum(age, 0), AGE_CAP)[:, None] / AGE_CAP  # [U, 1]
        weight = w[:4] + scaled * w[4:]  # [U, 4]
        r_llm, r_srm, n = list_ranks(srm, valid)
        count = np.maximum(n, 1)[:, None]
        return (
            weight[:, :1] * (1.0 - r_llm / count)
            + weight[:, 1:2] * _minmax(llm, valid)
            + weight[:, 2:3] * sigmoid(srm)
            + weight[:, 3:] * (1.0 - r_srm / count)
        )


def age_bucket_labels(ages: Sequence[int]) -> list[str]:
    """ "0", "1", "2–3", "7+": the ages each bucket covers."""
    labels = []
    for start, end in zip(ages, [*ages[1:], None]):
        if end is None:
            labels.append(f"{start}+")
        elif end == start + 1:
            labels.append(str(start))
        else:
            labels.append(f"{start}–{end - 1}")
    return labels


@dataclass(frozen=True)
class ScoreBlendFusion(Fusion):
    """Blend of normalised LLM log-probabilities and SRM probabilities: `β·ℓ̂ + (1 − β)·σ(s)`.

    `ℓ̂` normalises the LLM log-probabilities `ℓ` over the valid slots of the list:
        "minmax":  ℓ̂ = (ℓ − min ℓ) / (max ℓ − min ℓ)     (1 everywhere when all are equal)
        "softmax": ℓ̂ = exp(ℓ / τ) / Σ exp(ℓ / τ)         (sums to 1; small terms for long lists)
    Unlike the rank fusions this one sees how sure the LLM was, not just its order.
    """

    name: ClassVar[str] = "blend"
    beta: float = 0.5  # weight of the LLM term
    normalize: str = "minmax"  # "minmax" keeps both terms in [0, 1]; "softmax" is a distribution
    temperature: float = 1.0  # τ for "softmax"; > 1 flattens the LLM's distribution

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.normalize not in ("minmax", "softmax"):
            raise ValueError(f"normalize must be 'minmax' or 'softmax', got {self.normalize!r}")
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def fuse(
        self, llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
    ) -> np.ndarray:
        if self.normalize == "minmax":
            llm_term = _minmax(llm, valid)
        else:
            llm_term = _softmax(llm / self.temperature, valid)
        return self.beta * llm_term + (1.0 - self.beta) * sigmoid(srm)


def _minmax(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(x − min) / (max − min) over each row's valid slots; 1 where the row is constant."""
    low = np.where(valid, x, np.inf).min(axis=1, keepdims=True)  # [U, 1]
    high = np.where(valid, x, -np.inf).max(axis=1, keepdims=True)  # [U, 1]
    span = high - low
    safe = np.where(np.isfinite(span) & (span > 0), span, 1.0)
    return np.where(span > 0, (x - low) / safe, 1.0)


def _softmax(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Softmax over each row's valid slots (0 elsewhere)."""
    shifted = np.where(valid, x, -np.inf)
    top = shifted.max(axis=1, keepdims=True)
    e = np.where(valid, np.exp(shifted - np.where(np.isfinite(top), top, 0.0)), 0.0)
    return e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)


@dataclass(frozen=True)
class ReciprocalRankFusion(Fusion):
    """Reciprocal-rank fusion (Cormack et al. 2009): `1/(k + r_llm) + 1/(k + r_srm)`.

    Ranks are 1-based (the top item has rank 1) among the valid slots. Only the two orders
    matter, so neither model's score scale can dominate.
    """

    name: ClassVar[str] = "rrf"
    k: float = 60.0  # damping constant from the original paper; larger = flatter

    def __post_init__(self) -> None:
        if self.k < 0.0:
            raise ValueError(f"k must be >= 0, got {self.k}")

    def fuse(
        self, llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
    ) -> np.ndarray:
        r_llm, r_srm, _ = list_ranks(srm, valid)
        return 1.0 / (self.k + r_llm + 1.0) + 1.0 / (self.k + r_srm + 1.0)


@dataclass(frozen=True)
class LLMOnlyFusion(Fusion):
    """The LLM's own order: `1 − j/N` (the reference with no SRM)."""

    name: ClassVar[str] = "llm_only"

    def fuse(
        self, llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
    ) -> np.ndarray:
        r_llm, n = llm_ranks(valid)
        return 1.0 - r_llm / np.maximum(n, 1)[:, None]


@dataclass(frozen=True)
class SRMOnlyFusion(Fusion):
    """The SRM's own order inside the LLM's list: `σ(s)` (ties kept in LLM order)."""

    name: ClassVar[str] = "srm_only"

    def fuse(
        self, llm: np.ndarray, srm: np.ndarray, valid: np.ndarray, age: np.ndarray
    ) -> np.ndarray:
        return sigmoid(srm)


FUSIONS: dict[str, type[Fusion]] = {
    RankSigmoidFusion.name: RankSigmoidFusion,
    AgeAlphaFusion.name: AgeAlphaFusion,
    LearnedFusion.name: LearnedFusion,
    ScoreBlendFusion.name: ScoreBlendFusion,
    ReciprocalRankFusion.name: ReciprocalRankFusion,
    LLMOnlyFusion.name: LLMOnlyFusion,
    SRMOnlyFusion.name: SRMOnlyFusion,
}


def build_fusion(name: str = "lsc4rec", **kwargs: Any) -> Fusion:
    """The fusion registered under `name`, built with its fields (e.g. `alpha=1/3`).

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown field or bad value.
    """
    return registry.build(FUSIONS, "fusion", name, **kwargs)


def rank_order(fused: np.ndarray) -> np.ndarray:
    """Slot indices `[U, N]` by descending fused score, ties in LLM (slot) order."""
    key = -np.nan_to_num(as_batch(fused), nan=-np.inf)
    return np.argsort(key, axis=1, kind="stable")


def rerank_batch(
    items: Any,
    llm_scores: Any,
    srm_logits: Any,
    valid: np.ndarray,
    fusion: Fusion,
    k: int | None = None,
    age: Any = None,
) -> np.ndarray:
    """Final item orders of a batch of lists: `[U, k]` ids, best first, 0 where a row runs out.

    Args:
        items: `[U, N]` candidate ids (LLM order).
        llm_scores: `[U, N]` LLM log-probabilities.
        srm_logits: `[U, N]` SRM logits of the same items.
        valid: `[U, N]` bool, slots that may be shown (see `valid_mask`).
        fusion: how to merge the two.
        k: how many to return (default: all `N`).
        age: `[U]` clicks since each list was made (None = 0).
    """
    items = as_batch(items, np.int64)
    fused = fusion(llm_scores, srm_logits, valid, age)  # [U, N]
    order = rank_order(fused)[:, : items.shape[1] if k is None else k]  # [U, k]
    ranked = np.take_along_axis(items, order, axis=1)
    shown = np.take_along_axis(np.isfinite(fused), order, axis=1)
    return np.where(shown, ranked, 0)


def rerank(
    candidates: CandidateList,
    srm_logits: Any,
    history: Iterable[int] = (),
    fusion: Fusion | None = None,
    k: int | None = None,
    age: int = 0,
) -> np.ndarray:
    """One user's final order: the cached list, history items removed, sorted by fused score.

    Args:
        candidates: the cached list (items best first, LLM log-probabilities).
        srm_logits: `[N]` SRM logits of `candidates.items`.
        history: items the user already clicked; they are never shown.
        fusion: default `RankSigmoidFusion()` (α = 0.5).
        k: how many items to return (default: every valid one).
        age: clicks since the list was made.
    Returns:
        `[≤ k]` int64 item ids, best first.
    """
    fusion = RankSigmoidFusion() if fusion is None else fusion
    history = history if isinstance(history, np.ndarray) else list(history)
    valid = valid_mask(candidates.items, [history])
    return rerank_valid(candidates, srm_logits, valid, fusion, k, age)


def rerank_valid(
    candidates: CandidateList,
    srm_logits: Any,
    valid: np.ndarray,
    fusion: Fusion,
    k: int | None = None,
    age: int = 0,
) -> np.ndarray:
    """`rerank` with the `[N]` (or `[1, N]`) mask of showable slots already known (a device
    keeps a table of what it clicked, so the mask costs one lookup)."""
    items = candidates.items
    valid = np.asarray(valid, dtype=bool).reshape(1, -1)
    logits = np.asarray(srm_logits, dtype=np.float64).reshape(1, -1)
    llm = np.asarray(candidates.scores, dtype=np.float64).reshape(1, -1)
    if not logits.shape == llm.shape == valid.shape == (1, len(items)):
        raise ValueError(f"{len(items)} candidates, {logits.shape[1]} logits, {valid.shape[1]} "
                         "mask slots")  # fmt: skip
    # One row, so the batch path's checks and gathers are skipped (a device does this per
    # click); the order is `rerank_batch`'s: fused score descending, ties in LLM order.
    ages = np.array([age], dtype=np.int64)
    fused = np.where(valid, fusion.fuse(llm, logits, valid, ages), -np.inf)[0]
    fused[np.isnan(fused)] = -np.inf  # an undefined score is never shown, as in the batch path
    order = np.argsort(-fused, kind="stable")[: len(items) if k is None else k]
    return items[order[np.isfinite(fused[order])]]
