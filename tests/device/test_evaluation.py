"""Offline evaluation protocols, checked by hand on a stub model whose scores are fixed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrec.evaluation import evaluate_full, evaluate_sampled
from seqrec.models.base import SequentialRecommender, SRMConfig
from seqrec.models.sasrec import SASRec, SASRecConfig

# Score of each item 0..6 (0 is padding), the same for every user.
ITEM_SCORES = [0.0, 0.9, 0.5, 0.5, 0.1, 0.7, 0.3]


class FixedScores(SequentialRecommender):
    """Test stub: each item has one fixed score; records the mode it was called in."""

    name = "fixed"

    def __init__(self, item_scores: list[float]) -> None:
        super().__init__(SRMConfig(num_items=len(item_scores) - 1))
        self.register_buffer("item_scores", torch.tensor(item_scores))
        self.calls: list[tuple[bool, bool]] = []  # (training, grad enabled) per call

    def score(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.item_scores[items]


def log2_discount(rank: int) -> float:
    return 1.0 / math.log2(rank + 2)


def test_sampled_ranks_with_pessimistic_ties():
    model = FixedScores(ITEM_SCORES)
    histories = np.array([[1, 0], [2, 3]])
    targets = np.array([2, 5])
    # User 0: target 0.5 vs 0.9 (above), 0.5 (tie, counts above), 0.1 -> rank 2.
    # User 1: target 0.7 vs 0.1, 0.3, 0.5 -> rank 0.
    negatives = np.array([[1, 3, 4], [4, 6, 3]])
    result = evaluate_sampled(model, histories, targets, negatives, ks=(1, 3), batch_size=1)
    assert result["HR@1"] == pytest.approx(0.5)
    assert result["NDCG@1"] == pytest.approx(0.5)
    assert result["HR@3"] == pytest.approx(1.0)
    assert result["NDCG@3"] == pytest.approx((log2_discount(2) + 1.0) / 2)
    assert all(call == (False, False) for call in model.calls)  # eval mode, no grad


def test_full_ranking_masks_history_but_not_the_target():
    model = FixedScores(ITEM_SCORES)
    histories = torch.tensor([[1, 0], [5, 2], [3, 6]])
    targets = torch.tensor([2, 3, 3])
    # User 0 (item 1 masked): 0.7 above, 0.5 tie -> rank 2.
    # User 1 (items 5, 2 masked): only 0.9 above -> rank 1.
    # User 2 (item 6 masked, target 3 in history stays): 0.9, 0.7 above, 0.5 tie -> rank 3.
    result = evaluate_full(model, histories, targets, ks=(1, 3, 5), batch_size=2)
    assert result["HR@1"] == pytest.approx(0.0)
    assert result["HR@3"] == pytest.approx(2 / 3)
    assert result["NDCG@3"] == pytest.approx((log2_discount(2) + log2_discount(1)) / 3)
    assert result["HR@5"] == pytest.approx(1.0)
    assert result["NDCG@5"] == pytest.approx(
        (log2_discount(2) + log2_discount(1) + log2_discount(3)) / 3
    )
    assert set(result) >= {"HR@1", "NDCG@1", "HR@3", "NDCG@3", "HR@5", "NDCG@5"}


def test_constant_scores_get_the_worst_rank():
    model = FixedScores([1.0] * 7)
    histories = torch.tensor([[1], [4]])
    targets = torch.tensor([2, 5])
    # Four unmasked other items (padding excluded), all tied -> rank 4 for both users.
    full = evaluate_full(model, histories, targets, ks=(4, 5))
    assert full == pytest.approx(
        {
            "HR@4": 0.0,
            "NDCG@4": 0.0,
            "MRR@4": 0.0,
            "HR@5": 1.0,
            "NDCG@5": log2_discount(4),
            "MRR@5": 1 / 5,
        }
    )
    sampled = evaluate_sampled(model, histories, targets, np.array([[3, 4], [1, 6]]), ks=(1, 3))
    assert sampled["HR@1"] == 0.0 and sampled["HR@3"] == 1.0
    assert sampled["NDCG@3"] == pytest.approx(log2_discount(2))


def test_batch_size_does_not_change_the_result():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=20, hidden_size=8, max_len=5, inner_size=16))
    gen = torch.Generator().manual_seed(0)
    histories = torch.randint(0, 21, (9, 5), generator=gen)
    targets = torch.randint(1, 21, (9,), generator=gen)
    negatives = torch.randint(1, 21, (9, 7), generator=gen)
    assert evaluate_full(model, histories, targets, batch_size=2) == pytest.approx(
        evaluate_full(model, histories, targets, batch_size=100)
    )
    assert evaluate_sampled(model, histories, targets, negatives, batch_size=4) == pytest.approx(
        evaluate_sampled(model, histories, targets, negatives, batch_size=100)
    )
    assert not model.training


def test_nan_target_scores_are_refused():
    model = FixedScores([0.0, float("nan"), 0.5])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_full(model, torch.tensor([[2]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_sampled(model, torch.tensor([[2]]), torch.tensor([1]), torch.tensor([[2]]))


@pytest.mark.parametrize(
    ("histories", "targets", "negatives", "match"),
    [
        ([1, 2], [1, 2], [[3], [4]], "histories must be"),
        ([[1], [2]], [1], [[3], [4]], "targets must be"),
        ([[1], [2]], [1, 2], [[3]], "negatives must be"),
    ],
)
def test_shape_errors(histories, targets, negatives, match):
    with pytest.raises(ValueError, match=match):
        evaluate_sampled(FixedScores(ITEM_SCORES), histories, targets, negatives)


def test_full_ranking_rejects_targets_outside_the_catalogue():
    with pytest.raises(ValueError, match="targets must lie in 1..6"):
        evaluate_full(FixedScores(ITEM_SCORES), [[1]], [7])
