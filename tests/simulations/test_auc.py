"""The measure-AUC table on a hand-made stream whose labels and scores are known in advance.

Two users, T = 4 steps, lists of 3 items in LLM order (the fusion is the LLM's own order, so a
target's rank is its place among the list's unclicked items). Every label below was worked out
by hand from the lists; nothing is derived from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from device.fusion import LLMOnlyFusion
from shared.device_format import SURPRISE_COLUMNS
from simulations.replay import FreshLists, ReplayData, ReplayStream, SRMTables
from simulations.replay.tables import pair_count
from simulations.request_rate.auc import auc_table, measure_scores, state_labels

T, N = 4, 3
DRIFT = SURPRISE_COLUMNS.index("drift")

# Each user: one click of history, then the stream's four targets.
SEQUENCES = (np.array([1, 11, 12, 13, 14]), np.array([2, 21, 22, 23, 24]))
LISTS = np.array(
    [
        # user 0: list j = [target j, target j+2, filler]
        [[11, 13, 90], [12, 14, 91], [13, 95, 92], [14, 96, 93]],
        # user 1: list j = [target j+1, target j, filler]
        [[22, 21, 85], [23, 22, 86], [24, 23, 87], [99, 24, 88]],
    ]
)
# The drift of the click before each step (step 0: the history's last click).
DRIFTS = np.array(
    [[0.0, 0.75, 0.125, 0.5], [0.0, 0.25, 1.0, 0.375]]
)  # exact in binary: ties stay ties
# Each user's latent topic at each of its clicks (history click first).
TOPICS = [np.array([0, 0, 1, 1, 1]), np.array([3, 4, 4, 3, 3])]

# Scored states, in order: (step, held list) = (1,0) (2,0) (2,1) (3,0) (3,1) (3,2), per user.
FRESH_BETTER = [
    # user 0: the fresh list has the target first; list t-2 has it first too once t-2's own
    # target is clicked (a tie, not better); other old lists lack it
    True, False, True, True, False, True,
    # user 1: the fresh list has the target second (behind the next one); list t-1 has it
    # first (its first item already clicked), older lists lack it
    False, True, False, True, True, False,
]  # fmt: skip
TOPIC_SWITCH = [
    False, True, True, False, False, False,  # user 0: topic 0 -> 1 at its 2nd stream click
    True, False, False, True, True, True,  # user 1: 3 -> 4 at the 1st, 4 -> 3 at the 3rd
]  # fmt: skip
DRIFT_LAST = [0.75, 0.125, 0.125, 0.5, 0.5, 0.5, 0.25, 1.0, 1.0, 0.375, 0.375, 0.375]
DRIFT_MEAN = [  # mean drift of the clicks since list j was fetched (steps j+1 … t)
    0.75, 0.4375, 0.125, 1.375 / 3, 0.3125, 0.5,
    0.25, 0.625, 1.0, 1.625 / 3, 0.6875, 0.375,
]  # fmt: skip


def hand_made_data() -> ReplayData:
    stream = ReplayStream("test", np.array([0, 1]), SEQUENCES, np.array([1, 1]), T)
    scores = np.broadcast_to(np.array([-1.0, -2.0, -3.0], np.float32), LISTS.shape).copy()
    lists = FreshLists(LISTS, scores, model_version="hand", request_history=50)
    surprise = np.zeros((2, T, len(SURPRISE_COLUMNS)))
    surprise[:, :, DRIFT] = DRIFTS
    logits = np.zeros((2, pair_count(T), N), np.float32)
    return ReplayData(stream, lists, SRMTables(logits, np.full((2, T), np.nan), surprise))


def pairwise_auc(scores, labels) -> float:
    """AUC by counting every (positive, negative) pair: ordered 1, tied 1/2."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_labels_are_the_hand_worked_ones():
    states = state_labels(hand_made_data(), LLMOnlyFusion(), TOPICS)
    assert states.rows.tolist() == [0] * 6 + [1] * 6
    assert states.labels["fresh_better"].tolist() == FRESH_BETTER
    assert states.labels["topic_switch"].tolist() == TOPIC_SWITCH


def test_scores_are_read_at_each_states_step_and_list():
    data = hand_made_data()
    states = state_labels(data, LLMOnlyFusion(), TOPICS)
    scores = measure_scores(data, states.keep, measures=("drift", "drift_mean"))
    np.testing.assert_allclose(scores["drift"], DRIFT_LAST)
    np.testing.assert_allclose(scores["drift_mean"], DRIFT_MEAN)


def test_auc_table_gives_the_pairwise_aucs_of_the_hand_made_stream():
    table = auc_table(hand_made_data(), LLMOnlyFusion(), topics=TOPICS, draws=20)
    rows = {row["measure"]: row for row in table}
    for measure, scores in (("drift", DRIFT_LAST), ("drift_mean", DRIFT_MEAN)):
        row = rows[measure]
        assert row["fresh_better_auc"] == pytest.approx(pairwise_auc(scores, FRESH_BETTER))
        assert row["topic_switch_auc"] == pytest.approx(pairwise_auc(scores, TOPIC_SWITCH))
        assert row["fresh_better_positives"] == pytest.approx(np.mean(FRESH_BETTER))
        assert row["fresh_better_lo"] <= row["fresh_better_auc"] <= row["fresh_better_hi"]
    # a measure that knows the answer in advance would score 1: check the table can tell
    assert pairwise_auc(FRESH_BETTER, FRESH_BETTER) == 1.0
