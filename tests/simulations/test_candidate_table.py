"""The candidate table's parts on hand-made lists: fresh vs stale, random lists, cold targets."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.candidate_table import (
    check_cold_training,
    fresh_stale_rows,
    list_metrics,
    random_lists,
    text_knn_lists,
)
from simulations.request_rate import bootstrap_indices


def test_fresh_stale_counts_targets_per_offset():
    # Two users, three steps, lists of two. The stream-start list is [1, 2] for both.
    items = np.array(
        [
            [[1, 2], [3, 4], [5, 6]],  # user 0: fresh lists hold each later target first
            [[1, 2], [1, 2], [7, 8]],  # user 1: step 1 keeps the start list; step 2 misses
        ]
    )
    targets = np.array([[2, 3, 5], [9, 1, 9]])
    rows = fresh_stale_rows(items, targets, bootstrap_indices(2, 200, seed=0))
    by_offset = {r["offset"]: r for r in rows}
    assert by_offset["1"]["fresh in list"] == by_offset["1"]["stale in list"] == 0.5
    assert by_offset["2"]["fresh in list"] == 1.0 and by_offset["2"]["stale in list"] == 0.5
    assert by_offset["3"]["fresh in list"] == 0.5 and by_offset["3"]["stale in list"] == 0.0
    assert by_offset["mean"]["in list diff"] == pytest.approx(np.mean([3 / 3 - 1 / 3, 0.0]))
    # NDCG@10 of the list's own order: user 0's fresh lists put each target first.
    assert by_offset["2"]["fresh NDCG@10"] == np.mean([1.0, 1.0])
    assert by_offset["1"]["stale NDCG@10"] == np.mean([1 / np.log2(3), 0.0])


def test_random_lists_are_distinct_unseen_and_seeded():
    histories = [np.array([1, 2, 3]), np.arange(1, 96)]
    lists = random_lists(histories, num_items=100, n=10, seed=1)
    assert len(lists[0]) == 10 == len(set(lists[0].tolist()))
    assert not set(lists[0].tolist()) & {1, 2, 3}
    assert sorted(lists[1].tolist()) == [96, 97, 98, 99, 100]  # only five items are left
    again = random_lists(histories, num_items=100, n=10, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(lists, again))


def test_cold_targets_get_their_own_recall():
    lists = [np.array([5, 6]), np.array([7, 8]), np.array([9, 1])]
    targets = np.array([6, 3, 9])
    cold = np.array([False, True, True])
    metrics = list_metrics(lists, targets, 2, cold=cold)
    assert metrics["Recall@2"] == pytest.approx(2 / 3)
    assert metrics["Recall@2 cold"] == pytest.approx(1 / 2)


def test_a_generator_trained_on_other_cold_items_is_refused(tmp_path):
    (tmp_path / "training_log.json").write_text('{"cold_items": {"share": 0.1, "seed": 0}}')
    check_cold_training(str(tmp_path), 0.1, 0)
    with pytest.raises(ValueError, match="trained with cold items .* share 0.1 seed 3"):
        check_cold_training(str(tmp_path), 0.1, 3)
    with pytest.raises(ValueError, match="the table asks for share 0.0"):
        check_cold_training(str(tmp_path), 0.0, 0)
    (tmp_path / "training_log.json").unlink()  # a folder from before the protocol: no cold items
    check_cold_training(str(tmp_path), 0.0, 0)
    with pytest.raises(ValueError, match="--cold-items 0.1"):
        check_cold_training(str(tmp_path), 0.1, 0)


def test_text_neighbours_rank_by_cosine_with_the_recent_clicks_and_skip_the_history():
    vectors = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]])
    lists = text_knn_lists(vectors, [np.array([3, 1])], k=1, n=3)  # the last click: item 1
    assert lists[0].tolist() == [2, 5, 4]  # nearest to item 1 first; items 1 and 3 left out
    lists = text_knn_lists(vectors, [np.array([1, 4])], k=2, n=1)  # mean of items 1 and 4
    assert lists[0].tolist() == [5]
