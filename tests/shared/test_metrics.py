import math

import numpy as np
import pytest

from shared.metrics import (
    candidate_list_ranks,
    full_ranking_ranks,
    hit_rate,
    mrr,
    ndcg,
    sampled_ranks,
    scored_list_ranks,
    summarize,
)


def test_metrics_at_hand_computed_ranks():
    ranks = np.array([0.0, 1.0, 4.0, 9.0, np.inf])
    assert hit_rate(ranks, 5).tolist() == [1, 1, 1, 0, 0]
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 1, 0]
    np.testing.assert_allclose(ndcg(ranks, 5), [1.0, 1 / math.log2(3), 1 / math.log2(6), 0, 0])
    np.testing.assert_allclose(ndcg(ranks, 10)[3], 1 / math.log2(11))
    np.testing.assert_allclose(mrr(ranks, 5), [1.0, 0.5, 0.2, 0.0, 0.0])
    summary = summarize(ranks, ks=(5,))
    assert summary["HR@5"] == pytest.approx(3 / 5)
    assert summary["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert summary["MRR@5"] == pytest.approx(1.7 / 5)


def test_sampled_ranks_count_higher_negatives():
    target = np.array([0.5, 0.9])
    negatives = np.array([[0.1, 0.7, 0.6, 0.2], [0.1, 0.2, 0.3, 0.4]])
    assert sampled_ranks(target, negatives).tolist() == [2.0, 0.0]


def test_ties_never_favour_the_target():
    # All scores equal: the target must come last among its 99 negatives, not first.
    ranks = sampled_ranks(np.zeros(1), np.zeros((1, 99)))
    assert ranks.tolist() == [99.0]
    assert hit_rate(ranks, 10).tolist() == [0.0]
    # One tie, one strictly higher: rank 2.
    assert sampled_ranks(np.array([0.5]), np.array([[0.5, 0.6, 0.1]])).tolist() == [2.0]


def test_full_ranking_masks_history_but_not_target():
    # items 1..5; scores for padding column 0 are ignored
    scores = np.array([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    # target 4 (score 2); history {1, 2, 4}: items 1 and 2 are masked, 3 (score 3) beats it.
    assert full_ranking_ranks(scores, np.array([4]), [[1, 2, 4]]).tolist() == [1.0]
    # without masking, items 1, 2, 3 beat it
    assert full_ranking_ranks(scores, np.array([4]), [[]]).tolist() == [3.0]


def test_full_ranking_tie_counts_against_target():
    scores = np.array([[0.0, 1.0, 1.0, 1.0]])
    assert full_ranking_ranks(scores, np.array([2]), [[]]).tolist() == [2.0]


def test_candidate_list_missing_target_scores_zero():
    ranks = candidate_list_ranks([[5, 3, 8], [1, 2, 4]], np.array([8, 9]))
    assert ranks[0] == 2.0 and np.isinf(ranks[1])
    summary = summarize(ranks, ks=(5,))
    assert summary["HR@5"] == pytest.approx(0.5)
    assert summary["NDCG@5"] == pytest.approx(0.5 / math.log2(4))


def test_scored_list_ranks_with_ties_and_padding():
    items = np.array([[4, 7, 9, 0], [4, 7, 9, 0], [1, 2, 3, 0]])
    scores = np.array([[0.3, 0.3, 0.1, 5.0], [0.9, 0.3, 0.1, 5.0], [1, 1, 1, 1.0]])
    ranks = scored_list_ranks(items, scores, np.array([4, 4, 8]))
    assert ranks[0] == 1.0  # tied with item 7: counted against the target; pad ignored
    assert ranks[1] == 0.0
    assert np.isinf(ranks[2])
