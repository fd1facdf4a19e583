"""Offline evaluation of any SRM on (history, target) pairs, in the two protocols of the tables.

- `evaluate_sampled`: the target against fixed sampled negatives (the papers' protocol).
- `evaluate_full`: the target against every item, the user's history masked (honest protocol).

Both rank pessimistically (ties never favour the target; see `shared.metrics`) and return
mean HR@K, NDCG@K and MRR@K over users. Keep the two protocols in separate table columns.

Letters used in shape comments:
    U  users (evaluation rows)    L  history length
    S  sampled negatives per user N  num_items + 1 (column 0 = padding)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from seqrec.models.base import SequentialRecommender
from shared.metrics import full_ranking_ranks, sampled_ranks, scored_list_ranks, summarize

ArrayLike = np.ndarray | torch.Tensor | Sequence


def evaluate_sampled(
    model: SequentialRecommender,
    histories: ArrayLike,
    targets: ArrayLike,
    negatives: ArrayLike,
    ks: Sequence[int] = (5, 10),
    batch_size: int = 256,
) -> dict[str, float]:
    """Rank each target against its own sampled negatives.

    Args:
        model: any SRM; it is put in eval mode.
        histories: `[U, L]` item ids, 0 = padding.
        targets: `[U]` the held-out next item of each history.
        negatives: `[U, S]` sampled negative items (e.g. S = 99), none equal to the target.
        ks: cut-offs K of the metrics.
        batch_size: users scored per forward pass.
    Returns:
        `{"HR@5": …, "NDCG@5": …, "MRR@5": …, "HR@10": …, …}`, means over users.
    Raises:
        ValueError: mismatched shapes, or the model scored a target NaN.
    """
    hist, tgt = _check_pairs(histories, targets)
    neg = _as_long(negatives)
    if neg.dim() != 2 or neg.size(0) != hist.size(0):
        raise ValueError(f"negatives must be [U={hist.size(0)}, S], got {tuple(neg.shape)}")
    ranks = []
    for rows, h, t in _batches(model, hist, tgt, batch_size):
        items = torch.cat([t.unsqueeze(1), neg[rows].to(t.device)], dim=1)  # [u, 1 + S]
        scores = _to_numpy(model.score(h, items))  # [u, 1 + S]
        _check_finite_targets(scores[:, 0])
        ranks.append(sampled_ranks(scores[:, 0], scores[:, 1:]))
    return _summarize(ranks, ks)


def evaluate_full(
    model: SequentialRecommender,
    histories: ArrayLike,
    targets: ArrayLike,
    ks: Sequence[int] = (5, 10),
    batch_size: int = 256,
    exclude: Sequence[Sequence[int]] | None = None,
) -> dict[str, float]:
    """Rank each target against all items, masking the items of the user's history.

    Args:
        model: any SRM; it is put in eval mode.
        histories: `[U, L]` item ids, 0 = padding; these items are masked from the ranking
            (except the target, which is always ranked).
        targets: `[U]` the held-out next item of each history.
        ks: cut-offs K of the metrics.
        batch_size: users scored per forward pass.
        exclude: per row, the items to mask instead of the (possibly truncated) `histories`,
            e.g. the user's whole history when the model reads only its last `L` clicks.
    Returns:
        `{"HR@5": …, "NDCG@5": …, "MRR@5": …, "HR@10": …, …}`, means over users.
    Raises:
        ValueError: mismatched shapes, a target outside 1..num_items, or a NaN target score.
    """
    hist, tgt = _check_pairs(histories, targets)
    num_items = model.config.num_items
    if tgt.numel() and (tgt.min() < 1 or tgt.max() > num_items):
        raise ValueError(f"targets must lie in 1..{num_items}, got {tgt.min()}..{tgt.max()}")
    ranks = []
    if exclude is not None and len(exclude) != hist.size(0):
        raise ValueError(f"exclude must have {hist.size(0)} rows, got {len(exclude)}")
    for rows, h, t in _batches(model, hist, tgt, batch_size):
        scores = _to_numpy(model.score_all(h))  # [u, N]
        t_np = t.cpu().numpy()
        _check_finite_targets(scores[np.arange(len(t_np)), t_np])
        masks = h.cpu().numpy() if exclude is None else exclude[rows]
        ranks.append(full_ranking_ranks(scores, t_np, masks))
    return _summarize(ranks, ks)


def evaluate_in_lists(
    model: SequentialRecommender,
    histories: ArrayLike,
    targets: ArrayLike,
    lists: ArrayLike,
    ks: Sequence[int] = (5, 10),
    batch_size: int = 256,
) -> dict[str, float]:
    """Rank each target inside its candidate list by the model's scores (protocol (c)).

    Args:
        lists: `[U, N]` candidate items (0 = padding); a target missing from its list scores 0.
    Returns:
        Mean HR@K, NDCG@K, MRR@K over users.
    """
    hist, tgt = _check_pairs(histories, targets)
    cand = _as_long(lists)
    if cand.dim() != 2 or cand.size(0) != hist.size(0):
        raise ValueError(f"lists must be [U={hist.size(0)}, N], got {tuple(cand.shape)}")
    ranks = []
    for rows, h, t in _batches(model, hist, tgt, batch_size):
        items = cand[rows].to(h.device)
        scores = _to_numpy(model.score(h, items))  # [u, N]
        ranks.append(scored_list_ranks(items.cpu().numpy(), scores, t.cpu().numpy()))
    return _summarize(ranks, ks)


def carries_state(model: SequentialRecommender) -> bool:
    """Whether a device can run `model` by folding each click into a carried state
    (`init_state` and `step`, as TTT4Rec and GRU4Rec have) instead of re-reading a window."""
    base = SequentialRecommender
    return all(
        getattr(type(model), name) is not getattr(base, name) for name in ("init_state", "step")
    )


@contextmanager
def reading_whole_history(model: SequentialRecommender, length: int) -> Iterator[None]:
    """Within the block, `model` reads up to `length` clicks instead of its `max_len`.

    For a model that carries a state this is what a device computes by stepping every click
    since the first (step = forward; see the parity tests), whatever window it trained on.
    Models that re-read a window (SASRec: a position table of `max_len` rows) have no such
    reading.

    Raises:
        ValueError: the model carries no state.
    """
    if not carries_state(model):
        raise ValueError(f"{type(model).__name__} carries no state; it reads max_len clicks")
    trained = model.config.max_len
    model.config.max_len = max(trained, length)
    try:
        yield
    finally:
        model.config.max_len = trained


def _as_long(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).long()


def _check_pairs(histories: ArrayLike, targets: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    hist, tgt = _as_long(histories), _as_long(targets)
    if hist.dim() != 2:
        raise ValueError(f"histories must be [U, L], got shape {tuple(hist.shape)}")
    if tgt.shape != (hist.size(0),):
        raise ValueError(f"targets must be [U={hist.size(0)}], got shape {tuple(tgt.shape)}")
    return hist, tgt


def _batches(
    model: SequentialRecommender, hist: torch.Tensor, tgt: torch.Tensor, batch_size: int
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Eval mode, no grad, on the model's device: `(rows, histories, targets)` per batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        for start in range(0, hist.size(0), batch_size):
            rows = slice(start, start + batch_size)
            yield rows, hist[rows].to(device), tgt[rows].to(device)


def _to_numpy(scores: torch.Tensor) -> np.ndarray:
    return scores.detach().float().cpu().numpy()


def _check_finite_targets(target_scores: np.ndarray) -> None:
    # A NaN target compares False with everything, which would rank it first.
    if np.isnan(target_scores).any():
        raise ValueError("the model produced NaN scores for some targets")


def _summarize(ranks: list[np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    return summarize(all_ranks, ks)
