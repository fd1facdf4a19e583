"""Consistency measures: hand-computed values for identical, reversed, swapped and short lists."""

from __future__ import annotations

import numpy as np
import pytest

from device.consistency import (
    MEASURES,
    KendallDisagreement,
    MeanRankDifference,
    RBODisagreement,
    TopKDisagreement,
    all_measures,
    build_measure,
)

IDENTICAL = np.array([4.0, 3.0, 2.0, 1.0])  # SRM agrees with the LLM's list order
REVERSED = np.array([1.0, 2.0, 3.0, 4.0])
ALL = np.ones(4, dtype=bool)


def score(measure, logits, valid=None):
    logits = np.asarray(logits, dtype=float)
    valid = np.ones(logits.shape, dtype=bool) if valid is None else np.asarray(valid)
    return float(measure(logits, valid)[0])


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_identical_orders_score_zero(name):
    assert score(build_measure(name), IDENTICAL) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_constant_srm_agrees_with_llm(name):
    # ties are broken by LLM order, so an SRM with no opinion never triggers a request
    assert score(build_measure(name), np.zeros(6)) == pytest.approx(0.0, abs=1e-12)


def test_rank_diff_reversed_is_half_the_length():
    # |Δ| = 3, 1, 1, 3 -> 8 / 4 = 2; odd length 5: 4, 2, 0, 2, 4 -> 12 / 5
    assert score(MeanRankDifference(), REVERSED) == pytest.approx(2.0)
    assert score(MeanRankDifference(), [1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.4)


def test_rank_diff_penalises_missing_slots():
    # 2 of 4 slots padded, the 2 valid ones reversed: (1 + 1 + 2 · N/2) / 4 = 1.5
    short = [1.0, 2.0, 0.0, 0.0]
    valid = [True, True, False, False]
    assert score(MeanRankDifference(), short, valid) == pytest.approx(1.5)
    assert score(MeanRankDifference(missing_penalty=1.0), short, valid) == pytest.approx(1.0)
    # a clicked slot in the middle counts as missing: ranks a0 c1 d2 vs d0 c1 a2 -> (4 + 2) / 4
    assert score(MeanRankDifference(), [1.0, 9.0, 2.0, 3.0], [True, False, True, True]) == 1.5
    # 4 good items out of an expected 50: (0 + 46 · 25) / 50
    assert score(MeanRankDifference(expected_len=50), IDENTICAL) == pytest.approx(23.0)


def test_kendall_hand_computed():
    assert score(KendallDisagreement(), REVERSED) == pytest.approx(1.0)
    assert score(KendallDisagreement(), [4.0, 2.0, 3.0, 1.0]) == pytest.approx(1 / 6)  # 1 swap
    # short: 3 valid reversed -> 1; 1 valid -> no pairs -> 0
    assert score(KendallDisagreement(), [1.0, 2.0, 3.0, 0.0], [1, 1, 1, 0]) == pytest.approx(1.0)
    assert score(KendallDisagreement(), [1.0, 2.0, 3.0, 0.0], [1, 0, 0, 0]) == 0.0


def test_topk_hand_computed():
    # LLM a b c d, SRM b c a d: top-2 {a, b} vs {b, c}
    assert score(TopKDisagreement(k=2), [2.0, 4.0, 3.0, 1.0]) == pytest.approx(0.5)
    assert score(TopKDisagreement(k=2), REVERSED) == pytest.approx(1.0)
    assert score(TopKDisagreement(k=3), REVERSED) == pytest.approx(1 / 3)  # {a,b,c} ∩ {d,c,b}
    # no more than k valid items: the same set under both orders
    assert score(TopKDisagreement(k=10), REVERSED) == 0.0
    assert score(TopKDisagreement(k=2), [1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0]) == 0.0


def test_rbo_hand_computed():
    # [a,b,c] vs [b,a,c]: A = 0, 1, 1 -> RBO = .1·(0 + .9 + .81) + .9³ = 0.9
    assert score(RBODisagreement(p=0.9), [2.0, 3.0, 1.0]) == pytest.approx(0.1)
    # reversed 3: A = 0, 1/2, 1 -> .1·(.45 + .81) + .729 = .855
    assert score(RBODisagreement(p=0.9), [1.0, 2.0, 3.0]) == pytest.approx(0.145)
    # reversed 4: A = 0, 0, 2/3, 1 -> .1·(.54 + .729) + .9⁴ = .783
    assert score(RBODisagreement(p=0.9), REVERSED) == pytest.approx(0.217)
    # short: the padded slot is ignored, leaving the reversed-3 case; no valid item -> 0
    assert score(RBODisagreement(), [1.0, 2.0, 0.0, 3.0], [1, 1, 0, 1]) == pytest.approx(0.145)
    assert score(RBODisagreement(), [1.0, 2.0], [0, 0]) == 0.0


def test_measures_are_vectorised_over_users():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 20))
    valid = rng.random((6, 20)) > 0.2
    batch = all_measures(logits, valid)
    assert set(batch) == set(MEASURES)
    for name, values in batch.items():
        assert values.shape == (6,)
        rows = [score(build_measure(name), logits[u], valid[u]) for u in range(6)]
        np.testing.assert_allclose(values, rows)


def test_more_disagreement_scores_higher():
    rng = np.random.default_rng(1)
    base = np.linspace(3.0, -3.0, 30)
    mild = base + rng.normal(scale=0.3, size=(200, 30))
    wild = base + rng.normal(scale=3.0, size=(200, 30))
    valid = np.ones((200, 30), dtype=bool)
    for name, cls in MEASURES.items():
        assert cls()(mild, valid).mean() < cls()(wild, valid).mean(), name


def test_registry_and_validation():
    assert build_measure("topk", k=5).k == 5
    with pytest.raises(ValueError, match="unknown measure 'tau'"):
        build_measure("tau")
    with pytest.raises(ValueError, match="bad arguments"):
        build_measure("kendall", k=3)
    with pytest.raises(ValueError, match="p must be"):
        RBODisagreement(p=1.0)
    with pytest.raises(ValueError, match="k must be"):
        TopKDisagreement(k=0)
    with pytest.raises(ValueError, match="differ in shape"):
        KendallDisagreement()(np.zeros(4), np.ones(3, dtype=bool))
