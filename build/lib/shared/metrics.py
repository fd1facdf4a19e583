"""Ranking metrics: HR@K, NDCG@K and MRR@K from 0-based target ranks.

Three ways to get the rank of the target:
    (a) full ranking over all items, the user's history masked      -> `full_ranking_ranks`
    (b) the target against sampled negatives (e.g. 99)               -> `sampled_ranks`
    (c) the target's position inside a ranked candidate list         -> `candidate_list_ranks`
        (a target missing from the list gets rank = inf and scores 0 on every metric)

Tie rule: a tie never favours the target. An item scored equal to the target counts as ranked
above it, so a model that scores everything the same gets the worst rank, not the best.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

MISSING = np.inf  # rank of a target that is not in the ranked list


def pessimistic_rank(scores: np.ndarray, target_scores: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target among `scores`, ties counted against the target.

    Args:
        scores: `[U, C]` scores of the *other* items (the target itself excluded).
        target_scores: `[U]` score of each row's target.
    Returns:
        `[U]` float ranks: #others with score >= the target's score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target_scores = np.asarray(target_scores, dtype=np.float64)[:, None]
    return (scores >= target_scores).sum(axis=1).astype(np.float64)


def sampled_ranks(target_scores: np.ndarray, negative_scores: np.ndarray) -> np.ndarray:
    """Protocol (b): rank of the target among its sampled negatives (`[U]`, `[U, K]`)."""
    return pessimistic_rank(negative_scores, target_scores)


def full_ranking_ranks(
    scores: np.ndarray, targets: np.ndarray, histories: Sequence[Iterable[int]]
) -> np.ndarray:
    """Protocol (a): rank of the target among all items, the user's history masked.

    Args:
        scores: `[U, num_items + 1]` scores; column 0 (padding) is ignored.
        targets: `[U]` target item ids.
        histories: per row, the items to mask (the target stays ranked even if it is among them).
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets].copy()
    scores[:, 0] = -np.inf
    for row, hist in enumerate(histories):
        idx = np.asarray(list(hist), dtype=np.int64)
        scores[row, idx] = -np.inf
    scores[rows, targets] = -np.inf  # the target is not its own competitor
    return pessimistic_rank(scores, target_scores)


def candidate_list_ranks(ranked_lists: Sequence[Sequence[int]], targets: np.ndarray) -> np.ndarray:
    """Protocol (c): the target's 0-based position in each final ranked list, inf if absent."""
    ranks = np.full(len(targets), MISSING)
    for row, (items, target) in enumerate(zip(ranked_lists, targets)):
        hits = np.flatnonzero(np.asarray(items) == target)
        if len(hits):
            ranks[row] = float(hits[0])
    return ranks


def scored_list_ranks(items: np.ndarray, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Protocol (c) when the list is ranked by `scores` (`[U, N]`, padding id 0 ignored).

    The target's rank is pessimistic among the list's items; inf when it is not in the list.
    """
    items = np.asarray(items)
    scores = np.where(items == 0, -np.inf, np.asarray(scores, dtype=np.float64))
    is_target = items == np.asarray(targets)[:, None]
    present = is_target.any(axis=1)
    target_scores = np.where(is_target, scores, -np.inf).max(axis=1)
    others = np.where(is_target | (items == 0), -np.inf, scores)
    ranks = pessimistic_rank(others, target_scores)
    return np.where(present, ranks, MISSING)


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-row HR@k: 1 when the 0-based rank is below k."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-row NDCG@k with one relevant item: 1 / log2(rank + 2) when rank < k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = np.zeros_like(ranks)
    hit = ranks < k
    out[hit] = 1.0 / np.log2(ranks[hit] + 2.0)
    return out


def mrr(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-row MRR@k: 1 / (rank + 1) when rank < k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = np.zeros_like(ranks)
    hit = ranks < k
    out[hit] = 1.0 / (ranks[hit] + 1.0)
    return out


def summarize(ranks: np.ndarray, ks: Iterable[int] = (5, 10, 20)) -> dict[str, float]:
    """Mean HR@k, NDCG@k and MRR@k over rows, keyed like "NDCG@10"."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(hit_rate(ranks, k).mean()) if len(ranks) else 0.0
        out[f"NDCG@{k}"] = float(ndcg(ranks, k).mean()) if len(ranks) else 0.0
        out[f"MRR@{k}"] = float(mrr(ranks, k).mean()) if len(ranks) else 0.0
    return out
