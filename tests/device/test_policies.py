"""Request policies: rates on synthetic streams, calibration, budgets, the learned policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device.consistency import KendallDisagreement, TopKDisagreement
from device.policies import (
    FEATURE_NAMES,
    POLICIES,
    AlwaysPolicy,
    BudgetPolicy,
    ConsistencyPolicy,
    LearnedPolicy,
    LogisticRegression,
    NeverPolicy,
    PeriodicPolicy,
    PolicyObservation,
    RandomPolicy,
    ThresholdRule,
    build_policy,
    calibrate_rule,
    calibrate_threshold,
    observation_features,
    request_gain_labels,
)

N = 20  # list length in the synthetic observations


def observation(step=0, since=0, logits=None, history=(), items=None) -> PolicyObservation:
    items = np.arange(1, N + 1) if items is None else np.asarray(items)
    logits = np.zeros(len(items)) if logits is None else np.asarray(logits, dtype=float)
    llm = -np.arange(len(items), dtype=float)
    return PolicyObservation(step, since, items, llm, logits, np.asarray(history, dtype=np.int64))


def run_stream(policy, steps: int) -> list[int]:
    """Steps at which `policy` requests, with every request succeeding."""
    fetched_at, requested = 0, []
    for step in range(steps):
        if policy.decide(observation(step, step - fetched_at)):
            requested.append(step)
            fetched_at = step
    return requested


def synthetic_logits(users: int, seed: int) -> np.ndarray:
    """SRM logits that agree with the LLM order more or less, user by user."""
    rng = np.random.default_rng(seed)
    noise = rng.gamma(2.0, 1.0, size=(users, 1))
    return np.linspace(2.0, -2.0, N) + noise * rng.normal(size=(users, N))


def test_observation_valid_and_recent():
    obs = observation(history=[3, 7, 99], items=[3, 5, 7, 0])
    assert obs.valid.tolist() == [False, True, False, False]
    assert obs.recent(5).tolist() == [0, 0, 3, 7, 99]
    assert obs.recent(2).tolist() == [7, 99]
    with pytest.raises(ValueError, match="equal-length"):
        PolicyObservation(0, 0, np.arange(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match=">= 0"):
        observation(step=-1)


def test_never_and_always():
    assert run_stream(NeverPolicy(), 50) == []
    assert run_stream(AlwaysPolicy(), 50) == list(range(50))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_random_hits_its_rate(p):
    policy = RandomPolicy(p=p, seed=1)
    obs = observation()
    rate = np.mean([policy.decide(obs) for _ in range(20000)])
    assert abs(rate - p) < 0.02


def test_random_is_seeded_per_user_and_resets():
    policy = RandomPolicy(p=0.5, seed=3)
    first = run_stream(policy, 200)
    policy.reset()
    assert run_stream(policy, 200) == first
    assert run_stream(policy.spawn(7), 200) == run_stream(policy.spawn(7), 200)
    assert run_stream(policy.spawn(7), 200) != run_stream(policy.spawn(8), 200)


def test_periodic_is_exact():
    assert run_stream(PeriodicPolicy(m=3), 10) == [3, 6, 9]
    assert run_stream(PeriodicPolicy(m=1), 5) == [1, 2, 3, 4]
    # a failed request leaves the list old, so the policy asks again at the next step
    policy = PeriodicPolicy(m=4)
    assert [policy.decide(observation(s, s)) for s in range(3, 7)] == [False, True, True, True]


def test_budget_caps_requests_in_every_window():
    policy = BudgetPolicy(inner=AlwaysPolicy(), max_requests=2, window=5)
    steps = run_stream(policy, 20)
    assert steps == [0, 1, 5, 6, 10, 11, 15, 16]
    inner = BudgetPolicy(inner=RandomPolicy(p=0.6, seed=0), max_requests=3, window=10)
    steps = np.array(run_stream(inner, 500))
    windows = [((steps > s - 10) & (steps <= s)).sum() for s in range(500)]
    assert max(windows) <= 3
    assert len(steps) > 100  # the cap binds without starving the inner policy
    assert inner.knob == 0.6 and "budget(3/10)" in inner.label


def test_budget_spawn_copies_the_inner_policy():
    policy = BudgetPolicy(inner=RandomPolicy(p=0.5, seed=2), max_requests=5, window=10)
    a, b = policy.spawn(1), policy.spawn(2)
    assert a.inner is not policy.inner and a.inner is not b.inner
    assert run_stream(a, 100) != run_stream(b, 100)


def test_consistency_policy_thresholds_the_measure():
    reversed_obs = observation(logits=np.arange(N, dtype=float))
    agreeing_obs = observation(logits=-np.arange(N, dtype=float))
    policy = ConsistencyPolicy(measure="kendall", threshold=0.5)
    assert policy.score(reversed_obs) == pytest.approx(1.0)
    assert policy.decide(reversed_obs) and not policy.decide(agreeing_obs)
    assert ConsistencyPolicy(measure=KendallDisagreement(), threshold=1.0).decide(reversed_obs)
    assert policy.label == "consistency[kendall](0.5)"
    # clicked items leave the list: the rank-diff penalty alone can cross the threshold
    clicked = observation(logits=-np.arange(N, dtype=float), history=np.arange(1, 5))
    assert ConsistencyPolicy(measure="rank_diff", threshold=2.0).decide(clicked)  # 4·10/20


def test_calibrate_threshold_hand_computed():
    scores = [0.0, 0.0, 0.0, 1.0, 1.0, 2.0]
    assert calibrate_threshold(scores, 0.5) == 1.0  # rates: θ=0 → 1, θ=1 → 1/2, θ=2 → 1/6
    assert calibrate_threshold(scores, 0.2) == 2.0
    assert calibrate_threshold(scores, 0.0) == np.inf
    assert calibrate_threshold(scores, 1.0) == 0.0
    # the rule splits the tie at θ = 1: (1 + 2 · 0.25) / 6 = 0.25
    rule = calibrate_rule(scores, 0.25)
    assert (rule.threshold, rule.tie_prob) == (1.0, pytest.approx(0.25))
    with pytest.raises(ValueError, match="target_rate"):
        calibrate_threshold(scores, 1.5)
    with pytest.raises(ValueError, match="at least one"):
        calibrate_rule([], 0.5)


@pytest.mark.parametrize("target", [0.05, 0.2, 0.5, 0.8])
def test_calibrated_consistency_hits_target_on_held_out_scores(target):
    measure = KendallDisagreement()
    valid = np.ones((4000, N), dtype=bool)
    calibration = measure(synthetic_logits(4000, seed=0), valid)
    held_out = measure(synthetic_logits(4000, seed=1), valid)
    theta = calibrate_threshold(calibration, target)
    assert abs(np.mean(held_out >= theta) - target) < 0.02


@pytest.mark.parametrize("target", [0.05, 0.25, 0.55])
def test_tie_splitting_hits_target_with_few_distinct_scores(target):
    measure = TopKDisagreement(k=5)  # 6 distinct values only
    valid = np.ones((6000, N), dtype=bool)
    calibration = measure(synthetic_logits(6000, seed=2), valid)
    held_out = measure(synthetic_logits(6000, seed=3), valid)
    assert len(np.unique(calibration)) <= 6
    rule = calibrate_rule(calibration, target)
    rate = rule.decide(held_out, np.random.default_rng(0)).mean()
    assert abs(rate - target) < 0.02


def test_calibrated_policy_rate_through_decide():
    logits = synthetic_logits(1500, seed=4)
    policy = ConsistencyPolicy(measure="rbo")
    calibration = policy.measure(synthetic_logits(3000, seed=5), np.ones((3000, N), dtype=bool))
    policy.calibrate(calibration, 0.3)
    rate = np.mean([policy.decide(observation(logits=row)) for row in logits])
    assert abs(rate - 0.3) < 0.04  # 1500 held-out steps: binomial sd ≈ 0.012


def test_threshold_rule_edges():
    scores = np.array([0.0, 1.0, 1.0, 2.0])
    rng = np.random.default_rng(0)
    assert ThresholdRule(1.0).decide(scores, rng).tolist() == [False, True, True, True]
    assert ThresholdRule(1.0, tie_prob=0.0).decide(scores, rng).tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="tie_prob"):
        ThresholdRule(0.0, tie_prob=2.0)


def test_logistic_regression_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    w = rng.normal(size=9)
    x_train, x_test = rng.normal(size=(2000, 9)) * 3 + 1, rng.normal(size=(1000, 9)) * 3 + 1
    label = lambda x: (x @ w > 0.5).astype(float)  # noqa: E731
    model = LogisticRegression().fit(x_train, label(x_train))
    accuracy = ((model.predict_proba(x_test) >= 0.5) == label(x_test)).mean()
    assert accuracy > 0.95
    copy = LogisticRegression.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(copy.predict_proba(x_test), model.predict_proba(x_test))
    with pytest.raises(RuntimeError, match="not fitted"):
        LogisticRegression().predict_proba(x_test)
    with pytest.raises(ValueError, match="0 or 1"):
        LogisticRegression().fit(x_train, np.full(2000, 2.0))


def toy_stream(users: int, seed: int) -> tuple[list[PolicyObservation], np.ndarray]:
    """Observations whose SRM either follows or reverses the LLM; label = reversed."""
    rng = np.random.default_rng(seed)
    labels = rng.random(users) < 0.3
    observations = []
    for flip in labels:
        base = np.linspace(2.0, -2.0, N) * (-1.0 if flip else 1.0)
        logits = base + rng.normal(scale=1.0, size=N)
        history = rng.integers(1, 3 * N, size=rng.integers(1, 8))
        observations.append(observation(10, int(rng.integers(0, 5)), logits, history))
    return observations, labels.astype(float)


def test_feature_values_on_a_hand_made_observation():
    obs = observation(since=3, logits=np.zeros(N), history=[1, 2, 500, 600, 700])
    features = observation_features(obs)
    assert features.shape == (len(FEATURE_NAMES),)
    values = dict(zip(FEATURE_NAMES, features))
    assert values["log_list_age"] == pytest.approx(np.log(4.0))
    assert values["recent_overlap"] == pytest.approx(2 / 5)  # items 1 and 2 are in the list
    assert values["valid_fraction"] == pytest.approx(18 / 20)
    assert values["srm_max_prob"] == pytest.approx(0.5)
    assert values["srm_entropy"] == pytest.approx(1.0)  # uniform over the 18 valid items
    assert values["kendall"] == 0.0


def test_learned_policy_learns_and_calibrates():
    train_obs, train_y = toy_stream(600, seed=1)
    test_obs, test_y = toy_stream(300, seed=2)
    features = np.stack([observation_features(o) for o in train_obs])
    policy = LearnedPolicy().fit(features, train_y)
    decisions = np.array([policy.decide(o) for o in test_obs])
    assert (decisions == test_y.astype(bool)).mean() > 0.95
    policy.calibrate(features, 0.1)
    rate = np.mean([policy.decide(o) for o in test_obs])
    assert abs(rate - 0.1) < 0.05
    assert policy.knob == policy.threshold


def test_request_gain_labels_handle_missing_targets():
    labels = request_gain_labels([np.inf, 3.0, 2.0, np.inf], [1.0, 3.0, 5.0, np.inf])
    assert labels.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_registry():
    assert set(POLICIES) == {
        "never",
        "always",
        "random",
        "periodic",
        "consistency",
        "budget",
        "learned",
        "rate_controlled",
    }
    assert build_policy("random", p=0.2, seed=4).knob == 0.2
    assert build_policy("periodic", m=7).label == "periodic(7)"
    with pytest.raises(ValueError, match="unknown policy 'sometimes'"):
        build_policy("sometimes")
    with pytest.raises(ValueError, match="p must be"):
        build_policy("random", p=-0.1)
    with pytest.raises(ValueError, match="bad arguments"):
        build_policy("never", p=0.1)
    with pytest.raises(ValueError, match="unknown request measure"):
        ConsistencyPolicy(measure="cosine")


def test_ndcg_labels_count_only_clear_moves_inside_the_top_10():
    cached = [np.inf, 30.0, 3.0, 2.0, 9.0]
    fresh = [1.0, 25.0, 2.0, 2.0, 8.0]
    np.testing.assert_array_equal(request_gain_labels(cached, fresh), [1, 1, 1, 0, 1])
    # 30 -> 25 is outside the top 10, 9 -> 8 raises NDCG@10 by 0.014 only
    np.testing.assert_array_equal(request_gain_labels(cached, fresh, "ndcg"), [1, 0, 1, 0, 0])
    with pytest.raises(ValueError, match="unknown label"):
        request_gain_labels(cached, fresh, "hits")
