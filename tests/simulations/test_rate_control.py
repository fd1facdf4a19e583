"""The per-device rate controller: the device policy replays as the vectorised simulation the
calibration uses, the calibration hits its rate, and the chosen gain absorbs a drift."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device.policies import ConsistencyPolicy, RateControlledPolicy
from device.policies.control import quantile_level, score_quantiles
from device.policies.spec import policy_from_dict, policy_to_dict
from simulations.replay import replay
from simulations.request_rate import measure_table, reachable
from simulations.request_rate.calibration import (
    DRIFT_ABSORBED,
    calibrate_controlled,
    choose_gain,
    simulate_controlled,
)

from .test_policy_features import random_data


def test_quantile_levels_are_the_stored_distribution():
    scores = np.arange(100, dtype=float)
    quantiles = score_quantiles(scores, count=10)
    assert quantiles[0] == 0.0 and quantiles[-1] == 99.0
    np.testing.assert_allclose(quantile_level([0.0, 49.5, 99.0, 500.0], quantiles),
                               [0.0, 0.5, 1.0, 1.0])  # fmt: skip
    # repeated quantiles (a measure with few values): the run's top level
    assert quantile_level([1.0], (0.0, 1.0, 1.0, 1.0, 2.0))[0] == 0.75


@pytest.mark.parametrize("gain", [0.0, 0.3, 1.0])
def test_the_device_policy_replays_as_the_simulation(gain):
    data = random_data(seed=3)
    table = measure_table(data, "drift_mean")
    quantiles = score_quantiles(table[:, reachable(data.window)])
    levels = quantile_level(table, quantiles)
    level, achieved = calibrate_controlled(levels, 0.3, gain)
    assert achieved == pytest.approx(0.3, abs=0.1)  # 5 users × 6 steps: coarse
    expected, used = simulate_controlled(levels, level, gain, 0.3)
    inner = ConsistencyPolicy(measure="drift_mean")
    policy = RateControlledPolicy(inner, target_rate=0.3, quantiles=quantiles, level=level,
                                  gain=gain)  # fmt: skip
    stored = policy_from_dict(json.loads(json.dumps(policy_to_dict(policy))))
    for candidate in (policy, stored):
        result = replay(data, candidate)
        np.testing.assert_array_equal(result.requested, expected)
        np.testing.assert_array_equal(result.lists_used, used)


def test_a_request_raises_the_bar_and_waiting_lowers_it():
    policy = RateControlledPolicy(ConsistencyPolicy(), target_rate=0.2, level=0.8, gain=0.5)
    assert policy.threshold_level(0, 0) == 0.8
    assert policy.threshold_level(1, 1) == pytest.approx(0.8 + 0.5 * 0.8)
    assert policy.threshold_level(0, 5) == pytest.approx(0.8 - 0.5 * 1.0)
    with pytest.raises(ValueError, match="target_rate"):
        RateControlledPolicy(ConsistencyPolicy(), target_rate=0.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        RateControlledPolicy(ConsistencyPolicy(), quantiles=(1.0, 0.0))


def test_the_chosen_gain_absorbs_a_drift_the_plain_policy_does_not():
    rng = np.random.default_rng(0)
    users, window = 2000, 10
    # quantile levels of a score that rises with the list's age, with per-user spread
    steps, held = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    raw = (steps - held)[None] * 0.2 + rng.normal(size=(users, window, window))
    raw += rng.normal(size=(users, 1, 1))  # some users are always more surprised
    raw[:, ~reachable(window)] = np.nan
    quantiles = score_quantiles(raw[:, reachable(window)])
    levels = quantile_level(raw, quantiles)
    gain, found = choose_gain(levels, 0.1)
    assert gain > 0.0
    assert abs(found[f"rate_at_gain_{gain:g}"] / 0.1 - 1.0) <= DRIFT_ABSORBED
    # a real drift of the raw scores (not the shift choose_gain made up)
    drifted = quantile_level(raw + 0.35, quantiles)
    plain_level, _ = calibrate_controlled(levels, 0.1, 0.0)
    level, _ = calibrate_controlled(levels, 0.1, gain)
    plain = simulate_controlled(drifted, plain_level, 0.0, 0.1)[0].mean()
    controlled = simulate_controlled(drifted, level, gain, 0.1)[0].mean()
    assert plain > 0.115  # the plain policy overshoots by more than 15%
    assert abs(controlled / 0.1 - 1.0) < abs(plain / 0.1 - 1.0) / 2  # at least halved
