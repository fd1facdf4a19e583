"""Score fusion: hand-computed fused scores and orders, history removal, batching, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from device.fusion import (
    FUSIONS,
    AgeAlphaFusion,
    LLMOnlyFusion,
    RankSigmoidFusion,
    ReciprocalRankFusion,
    ScoreBlendFusion,
    SRMOnlyFusion,
    age_bucket_labels,
    build_fusion,
    list_ranks,
    rerank,
    rerank_batch,
    sigmoid,
    valid_mask,
)
from shared.candidates import CandidateList

ITEMS = np.array([10, 20, 30, 40])
LLM = np.array([-1.0, -2.0, -3.0, -4.0])
LN3 = math.log(3.0)  # σ(ln 3) = 0.75, σ(−ln 3) = 0.25
ALL = np.ones(4, dtype=bool)


def fused(fusion, srm, valid=ALL, llm=LLM):
    return fusion(llm, np.asarray(srm, dtype=float), valid)[0]


def test_list_ranks_break_srm_ties_by_llm_order_and_skip_invalid_slots():
    valid = np.array([True, False, True, True])
    r_llm, r_srm, n = list_ranks(np.array([1.0, 9.0, 1.0, 2.0]), valid)
    assert r_llm[0].tolist() == [0, 4, 1, 2]
    assert r_srm[0].tolist() == [1, 4, 2, 0]  # slot 1's logit 9 is ignored; 0 beats 2 on a tie
    assert n.tolist() == [3]


def test_lsc4rec_identical_orders_keeps_llm_order():
    # srm = 0 everywhere: σ = 0.5, fused = 0.5·(1 − j/4) + 0.25
    scores = fused(RankSigmoidFusion(), [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(scores, [0.75, 0.625, 0.5, 0.375])


def test_lsc4rec_reversed_srm_with_hand_computed_ties():
    # rank term [1, .75, .5, .25], σ = [.25, .25, .75, .75] -> [.625, .5, .625, .5]
    fusion = RankSigmoidFusion(alpha=0.5)
    srm = [-LN3, -LN3, LN3, LN3]
    np.testing.assert_allclose(fused(fusion, srm), [0.625, 0.5, 0.625, 0.5])
    candidates = CandidateList(ITEMS, LLM)
    # ties go to the LLM's order: 10 before 30, 20 before 40
    assert rerank(candidates, srm, fusion=fusion).tolist() == [10, 30, 20, 40]


def test_lsc4rec_short_list_renumbers_ranks_after_history_removal():
    valid = valid_mask(ITEMS, [[20]])  # the user clicked 20: N = 3, ranks 0, 1, 2
    scores = fused(RankSigmoidFusion(), [0.0] * 4, valid)
    # rank term [1, 2/3, 1/3] -> 0.5·rank + 0.25
    np.testing.assert_allclose(scores[[0, 2, 3]], [0.75, 7 / 12, 5 / 12])
    assert scores[1] == -np.inf
    assert rerank(CandidateList(ITEMS, LLM), [0.0] * 4, history=[20, 99]).tolist() == [10, 30, 40]


def test_lsc4rec_alpha_extremes_are_the_pure_orders():
    srm = [-LN3, -LN3, LN3, 2 * LN3]
    candidates = CandidateList(ITEMS, LLM)
    assert rerank(candidates, srm, fusion=RankSigmoidFusion(alpha=1.0)).tolist() == [10, 20, 30, 40]
    assert rerank(candidates, srm, fusion=RankSigmoidFusion(alpha=0.0)).tolist() == [40, 30, 10, 20]


def test_blend_minmax_hand_computed():
    # ℓ̂ = [1, 2/3, 1/3, 0], σ = [.25, .25, .75, .75], β = .5
    scores = fused(ScoreBlendFusion(beta=0.5), [-LN3, -LN3, LN3, LN3])
    np.testing.assert_allclose(scores, [0.625, 1 / 3 + 0.125, 1 / 6 + 0.375, 0.375])
    ranked = rerank(CandidateList(ITEMS, LLM), [-LN3, -LN3, LN3, LN3], fusion=ScoreBlendFusion())
    assert ranked.tolist() == [10, 30, 20, 40]


def test_blend_minmax_identical_and_short_list():
    np.testing.assert_allclose(
        fused(ScoreBlendFusion(beta=1.0), [0.0] * 4), [1.0, 2 / 3, 1 / 3, 0.0]
    )
    valid = valid_mask(ITEMS, [[10]])  # min-max over the remaining [-2, -3, -4]
    np.testing.assert_allclose(fused(ScoreBlendFusion(beta=1.0), [0.0] * 4, valid)[1:], [1, 0.5, 0])
    constant = fused(ScoreBlendFusion(beta=1.0), [0.0] * 4, ALL, llm=np.full(4, -2.0))
    np.testing.assert_allclose(constant, [1.0] * 4)


def test_blend_softmax_renormalises_log_probs_over_the_list():
    llm = np.log([0.4, 0.2, 0.2, 0.2])
    fusion = ScoreBlendFusion(beta=0.5, normalize="softmax")
    np.testing.assert_allclose(fused(fusion, [0.0] * 4, ALL, llm), [0.45, 0.35, 0.35, 0.35])
    # dropping the top item renormalises the rest to 1/3 each
    valid = np.array([False, True, True, True])
    np.testing.assert_allclose(fused(fusion, [0.0] * 4, valid, llm)[1:], [0.5 / 3 + 0.25] * 3)


def test_rrf_identical_reversed_and_short_hand_computed():
    rrf = ReciprocalRankFusion(k=60)
    np.testing.assert_allclose(fused(rrf, [4.0, 3.0, 2.0, 1.0]), [2 / 61, 2 / 62, 2 / 63, 2 / 64])
    reversed_scores = fused(rrf, [1.0, 2.0, 3.0, 4.0])
    expected = [1 / 61 + 1 / 64, 1 / 62 + 1 / 63, 1 / 63 + 1 / 62, 1 / 64 + 1 / 61]
    np.testing.assert_allclose(reversed_scores, expected)
    ranked = rerank(CandidateList(ITEMS, LLM), [1.0, 2.0, 3.0, 4.0], fusion=rrf)
    assert ranked.tolist() == [10, 40, 20, 30]  # 10 and 40 tie at the top: LLM order
    valid = valid_mask(ITEMS, [[30]])
    short = fused(rrf, [1.0, 2.0, 3.0, 4.0], valid)
    np.testing.assert_allclose(short[[0, 1, 3]], [1 / 61 + 1 / 63, 2 / 62, 1 / 63 + 1 / 61])


def test_reference_orders():
    srm = [0.0, 5.0, -1.0, 5.0]
    candidates = CandidateList(ITEMS, LLM)
    assert rerank(candidates, srm, fusion=LLMOnlyFusion()).tolist() == [10, 20, 30, 40]
    assert rerank(candidates, srm, fusion=SRMOnlyFusion()).tolist() == [20, 40, 10, 30]
    assert rerank(candidates, srm, history=[20], fusion=SRMOnlyFusion(), k=2).tolist() == [40, 10]


def test_rerank_batch_matches_rows_and_pads_short_rows():
    rng = np.random.default_rng(0)
    items = rng.permutation(np.arange(1, 41)).reshape(4, 10)
    items[3, 6:] = 0  # a short list, padded
    llm = -np.sort(rng.random((4, 10)), axis=1)
    srm = rng.normal(size=(4, 10))
    histories = [[items[0, 2]], [], [items[2, 0], items[2, 9]], [items[3, 1]]]
    valid = valid_mask(items, histories)
    for name in FUSIONS:
        fusion = build_fusion(name)
        batch = rerank_batch(items, llm, srm, valid, fusion, k=8)
        for row in range(4):
            one = rerank(CandidateList(items[row], llm[row]), srm[row], histories[row], fusion, k=8)
            assert batch[row][batch[row] != 0].tolist() == one.tolist()
        assert (batch[3, 5:] == 0).all()  # 6 slots, 1 clicked: 5 items left


def test_sigmoid_is_stable_for_large_logits():
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_registry_and_validation():
    assert set(FUSIONS) == {
        "lsc4rec", "age_lsc4rec", "learned", "blend", "rrf", "llm_only", "srm_only"
    }  # fmt: skip
    assert build_fusion("lsc4rec", alpha=1 / 3).alpha == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="unknown fusion 'nope'"):
        build_fusion("nope")
    with pytest.raises(ValueError, match="bad arguments"):
        build_fusion("rrf", alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        RankSigmoidFusion(alpha=1.5)
    with pytest.raises(ValueError, match="normalize"):
        ScoreBlendFusion(normalize="zscore")
    with pytest.raises(ValueError, match="same shape"):
        RankSigmoidFusion()(LLM, np.zeros(3), ALL)


def test_age_alpha_fusion_uses_the_alpha_of_each_lists_age_bucket():
    """Hand-computed: ranks j = 0..3 of 4 valid slots give rank terms 1, 3/4, 1/2, 1/4."""
    fusion = AgeAlphaFusion(alphas=(1.0, 0.5, 0.0), ages=(0, 1, 3))
    srm = np.array([-LN3, LN3, -LN3, LN3])  # σ: 0.25, 0.75, 0.25, 0.75
    llm = np.tile(LLM, (5, 1))
    scores = fusion(llm, np.tile(srm, (5, 1)), np.ones((5, 4), bool), age=[0, 1, 2, 3, 9])
    np.testing.assert_allclose(scores[0], [1.0, 0.75, 0.5, 0.25])  # age 0: α = 1, the LLM
    half = 0.5 * np.array([1.0, 0.75, 0.5, 0.25]) + 0.5 * np.array([0.25, 0.75, 0.25, 0.75])
    np.testing.assert_allclose(scores[1], half)  # ages 1 and 2: α = 0.5
    np.testing.assert_allclose(scores[2], half)
    np.testing.assert_allclose(scores[3], [0.25, 0.75, 0.25, 0.75])  # ages 3+: the SRM
    np.testing.assert_allclose(scores[4], scores[3])
    candidates = CandidateList(ITEMS, LLM)
    assert rerank(candidates, srm, fusion=fusion, age=0).tolist() == [10, 20, 30, 40]
    assert rerank(candidates, srm, fusion=fusion, age=5).tolist() == [20, 40, 10, 30]
    assert rerank(candidates, srm, fusion=fusion, age=1).tolist() == [20, 10, 40, 30]


def test_age_alpha_fusion_with_equal_alphas_is_lsc4rec_and_validates():
    rng = np.random.default_rng(0)
    llm, srm = np.sort(rng.normal(size=(6, 8)))[:, ::-1], rng.normal(size=(6, 8))
    valid = rng.random((6, 8)) > 0.2
    same = AgeAlphaFusion(alphas=(0.3,) * 5)
    np.testing.assert_array_equal(
        same(llm, srm, valid, age=np.arange(6)), RankSigmoidFusion(alpha=0.3)(llm, srm, valid)
    )
    assert build_fusion("age_lsc4rec", alphas=[0.9, 0.1], ages=[0, 4]) == AgeAlphaFusion(
        alphas=(0.9, 0.1), ages=(0, 4)
    )
    assert age_bucket_labels((0, 1, 2, 4, 7)) == ["0", "1", "2–3", "4–6", "7+"]
    for bad in [dict(alphas=(0.5,), ages=(1,)), dict(alphas=(0.5, 0.5), ages=(0, 0)),
                dict(alphas=(0.5, 1.5), ages=(0, 2)), dict(alphas=(0.5,), ages=(0, 2))]:  # fmt: skip
        with pytest.raises(ValueError):
            AgeAlphaFusion(**bad)


def test_the_learned_fusion_is_its_features_dot_its_weights():
    """The device's folded form equals the training features times the weights."""
    from device.fusion import LearnedFusion, fusion_features

    rng = np.random.default_rng(1)
    llm, srm = np.sort(rng.normal(size=(7, 9)))[:, ::-1], rng.normal(size=(7, 9))
    valid = rng.random((7, 9)) > 0.3
    age = np.array([0, 1, 2, 5, 9, 10, 30])
    weights = rng.normal(size=8)
    fusion = LearnedFusion(weights=tuple(weights))
    expected = np.where(valid, fusion_features(llm, srm, valid, age) @ weights, -np.inf)
    np.testing.assert_allclose(fusion(llm, srm, valid, age), expected, rtol=1e-12, atol=1e-12)
