"""Consistency measures: how much the SRM's order of the cached list disagrees with the LLM's.

When the user's interest has moved since the list was made, the device's SRM (which has seen
the new clicks) reorders the list differently from the LLM (which has not). Every measure
maps a batch of lists to a disagreement score per user:

    score = measure(srm_logits [U, N], valid [U, N]) -> [U]

Convention: **higher = more disagreement = more reason to request a fresh list.** The LLM's
order is the list order of the valid slots; the SRM's order sorts them by logit with ties
kept in LLM order (see `device.fusion.list_ranks`), so an SRM with no opinion never triggers
a request. Slots are invalid when padded (id 0) or already clicked.

Measures (names in `MEASURES`):
    "rank_diff"  LSC4Rec's mean |rank_LLM − rank_SRM| with a penalty per missing slot
    "kendall"    (1 − τ) / 2, the share of discordant pairs
    "topk"       1 − |top_k(LLM) ∩ top_k(SRM)| / k
    "rbo"        1 − rank-biased overlap (Webber et al. 2010), p = 0.9

Letters used in shape comments:
    U  users (rows)     N  list length (slots)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from device.fusion import as_batch, list_ranks
from shared import registry


class ConsistencyMeasure:
    """Base of the measures: `__call__(srm_logits, valid) -> [U]` disagreement scores."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "consistency"

    def __call__(self, srm_logits: Any, valid: Any) -> np.ndarray:
        r_llm, r_srm, n = list_ranks(srm_logits, as_batch(valid, bool))
        return self.score(r_llm, r_srm, n)

    def observe(self, obs: Any) -> float:
        """The score of one `PolicyObservation` (its cached list and SRM logits)."""
        return float(self(obs.srm_logits, obs.valid)[0])

    def score(self, r_llm: np.ndarray, r_srm: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Disagreement from `[U, N]` ranks (invalid slots ranked `N`) and `[U]` valid counts."""
        raise NotImplementedError


@dataclass(frozen=True)
class MeanRankDifference(ConsistencyMeasure):
    """LSC4Rec's consistency score: mean |Δrank|, plus a penalty per missing slot.

    With `n` valid slots out of an expected list length `N` (`expected_len`, default: the
    width of the array) and `M = max(N, n)`:

        score = ( Σ_valid |r_llm − r_srm| + (M − n) · P ) / M

    Each slot the list lacks (the generator returned fewer items, an id was invalid, or the
    user already clicked it) adds `P` (`missing_penalty`, default `N / 2`): about the mean
    |Δrank| of a fully reversed list, so a missing slot counts as a maximally disagreeing
    one. Identical orders score 0; a reversed full list of even length scores N / 2.
    """

    name: ClassVar[str] = "rank_diff"
    expected_len: int | None = None  # N; None = the array width (50 for the default lists)
    missing_penalty: float | None = None  # P per missing slot; None = N / 2

    def __post_init__(self) -> None:
        if self.expected_len is not None and self.expected_len < 1:
            raise ValueError(f"expected_len must be >= 1, got {self.expected_len}")
        if self.missing_penalty is not None and self.missing_penalty < 0.0:
            raise ValueError(f"missing_penalty must be >= 0, got {self.missing_penalty}")

    def score(self, r_llm: np.ndarray, r_srm: np.ndarray, n: np.ndarray) -> np.ndarray:
        expected = r_llm.shape[1] if self.expected_len is None else self.expected_len
        penalty = expected / 2.0 if self.missing_penalty is None else self.missing_penalty
        total = np.abs(r_llm - r_srm).sum(axis=1)  # [U]; invalid slots give |N − N| = 0
        slots = np.maximum(expected, n)  # [U]
        return (total + (slots - n) * penalty) / slots


@dataclass(frozen=True)
class KendallDisagreement(ConsistencyMeasure):
    """`(1 − τ) / 2` over the valid slots: the share of item pairs the two orders swap.

    τ is Kendall's tau-a between the LLM and SRM ranks (the SRM's ties are already broken
    by LLM order, so there are no tied pairs). 0 for identical orders, 1 for reversed ones,
    0 when fewer than two items are valid.
    """

    name: ClassVar[str] = "kendall"

    def score(self, r_llm: np.ndarray, r_srm: np.ndarray, n: np.ndarray) -> np.ndarray:
        width = r_llm.shape[1]
        both = (r_llm[:, :, None] < width) & (r_llm[:, None, :] < width)  # [U, N, N]
        # Valid slots have distinct ranks in both orders, so a pair is discordant when the
        # two orders disagree on which comes first (bool arrays: 8x less memory than int64
        # differences). Each discordant pair shows up twice, (i, j) and (j, i).
        before_llm = r_llm[:, :, None] < r_llm[:, None, :]  # [U, N, N]
        before_srm = r_srm[:, :, None] < r_srm[:, None, :]
        discordant = ((before_llm != before_srm) & both).sum(axis=(1, 2)) / 2.0  # [U]
        pairs = n * (n - 1) / 2.0
        return np.where(pairs > 0, discordant / np.maximum(pairs, 1.0), 0.0)


@dataclass(frozen=True)
class TopKDisagreement(ConsistencyMeasure):
    """`1 − |top_k'(LLM) ∩ top_k'(SRM)| / k'` with `k' = min(k, n)`.

    Only the head of the list, which the user actually sees, counts. A list with no more
    than `k` valid items has the same top-k' under both orders and scores 0.
    """

    name: ClassVar[str] = "topk"
    k: int = 10  # the depth the device shows

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def score(self, r_llm: np.ndarray, r_srm: np.ndarray, n: np.ndarray) -> np.ndarray:
        depth = np.minimum(self.k, n)[:, None]  # [U, 1]
        shared = ((r_llm < depth) & (r_srm < depth)).sum(axis=1)  # [U]
        return np.where(n > 0, 1.0 - shared / np.maximum(depth[:, 0], 1), 0.0)


@dataclass(frozen=True)
class RBODisagreement(ConsistencyMeasure):
    """`1 − RBO_ext` (rank-biased overlap, Webber et al. 2010, extrapolated form).

    With `A_d = |LLM_{:d} ∩ SRM_{:d}| / d` the agreement at depth `d` and `n` valid items:

        RBO_ext = (1 − p) · Σ_{d=1..n} p^(d−1) · A_d + p^n · A_n

    Both orders rank the same `n` items, so `A_n = 1` and the tail term is exactly `p^n`.
    Top-weighted: at p = 0.9 the first 10 depths carry about 65% of the weight. 0 for
    identical orders (and for lists with no valid item).
    """

    name: ClassVar[str] = "rbo"
    p: float = 0.9  # persistence; the expected depth a reader looks at is 1 / (1 − p) = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"p must be in (0, 1), got {self.p}")

    def score(self, r_llm: np.ndarray, r_srm: np.ndarray, n: np.ndarray) -> np.ndarray:
        width = r_llm.shape[1]
        depths = np.arange(1, width + 1)  # [N]
        # An item is in both top-d prefixes once d > max(r_llm, r_srm).
        last = np.maximum(r_llm, r_srm)  # [U, N]
        overlap = (last[:, :, None] < depths[None, None, :]).sum(axis=1)  # [U, N] = X_d
        agreement = overlap / depths  # [U, N] = A_d
        weights = (1.0 - self.p) * self.p ** (depths - 1.0)  # [N]
        weights = np.where(depths[None, :] <= n[:, None], weights, 0.0)  # [U, N]
        rbo = (weights * agreement).sum(axis=1) + self.p ** n.astype(np.float64)
        return np.where(n > 0, np.clip(1.0 - rbo, 0.0, 1.0), 0.0)


MEASURES: dict[str, type[ConsistencyMeasure]] = {
    MeanRankDifference.name: MeanRankDifference,
    KendallDisagreement.name: KendallDisagreement,
    TopKDisagreement.name: TopKDisagreement,
    RBODisagreement.name: RBODisagreement,
}


def build_measure(name: str = "rank_diff", **kwargs: Any) -> ConsistencyMeasure:
    """The measure registered under `name`, built with its fields (e.g. `k=5`).

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown field or bad value.
    """
    return registry.build(MEASURES, "measure", name, **kwargs)


def all_measures(
    srm_logits: Any, valid: Any, measures: dict[str, ConsistencyMeasure] | None = None
) -> dict[str, np.ndarray]:
    """Every measure's `[U]` scores at once (the ranks are computed once).

    Args:
        srm_logits: `[U, N]` SRM logits.
        valid: `[U, N]` bool.
        measures: name -> measure; default one of each with its default settings.
    """
    measures = {name: cls() for name, cls in MEASURES.items()} if measures is None else measures
    r_llm, r_srm, n = list_ranks(srm_logits, as_batch(valid, bool))
    return {name: measure.score(r_llm, r_srm, n) for name, measure in measures.items()}
