"""The fresh-vs-stale table on hand-made lists."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.candidate_table import fresh_stale_rows
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
