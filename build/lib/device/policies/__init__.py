"""Request policies: when should the device ask the cloud for a fresh candidate list?

Every policy answers one question per stream step, from what the device knows then
(`PolicyObservation`): `decide(obs) -> bool`. Policies keep per-user state (a random
stream, a request budget), so each user gets their own copy (`spawn(user)`), and
`reset()` starts it over. `knob` is the value a request-rate curve sweeps.

    never            never requests (the stale-list floor)
    always           requests at every step (the fresh-list ceiling)
    random(p)        requests with probability p, seeded
    periodic(m)      requests once the list is m steps old
    consistency(θ)   requests when a consistency measure is >= θ (LSC4Rec's policy)
    learned          a logistic regression on device-side features, thresholded
    budget           wraps any policy: at most r requests in any w consecutive steps
    rate_controlled  wraps a threshold policy: its level follows the device's own request
                     count, so the fleet keeps its target rate when scores drift

A threshold turns into a target request rate by quantiles over validation-stream scores
(`calibrate_threshold`, `calibrate_rule`); `ThresholdRule` can randomise exact ties so a
score with few distinct values (e.g. top-k overlap) still hits the target rate.

Letters used in shape comments:
    U  users / examples   N  list length   F  features   K  recent clicks
"""

from __future__ import annotations

from typing import Any

from device.consistency import MEASURES
from device.policies.base import PolicyObservation, RequestPolicy
from device.policies.calibration import ThresholdRule, calibrate_rule, calibrate_threshold
from device.policies.control import RateControlledPolicy
from device.policies.learned import (
    FEATURE_NAMES,
    FeatureConfig,
    LearnedPolicy,
    LogisticRegression,
    observation_features,
    request_features,
    request_gain_labels,
)
from device.policies.rules import (
    AlwaysPolicy,
    BudgetPolicy,
    ConsistencyPolicy,
    NeverPolicy,
    PeriodicPolicy,
    RandomPolicy,
)
from shared import registry

POLICIES: dict[str, type[RequestPolicy]] = {
    cls.name: cls
    for cls in (
        NeverPolicy,
        AlwaysPolicy,
        RandomPolicy,
        PeriodicPolicy,
        ConsistencyPolicy,
        BudgetPolicy,
        LearnedPolicy,
        RateControlledPolicy,
    )
}


def build_policy(name: str, **kwargs: Any) -> RequestPolicy:
    """The policy registered under `name`, built with its fields (e.g. `p=0.1, seed=3`).

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown field or bad value.
    """
    return registry.build(POLICIES, "policy", name, **kwargs)


__all__ = [
    "FEATURE_NAMES",
    "MEASURES",
    "POLICIES",
    "AlwaysPolicy",
    "BudgetPolicy",
    "ConsistencyPolicy",
    "FeatureConfig",
    "LearnedPolicy",
    "LogisticRegression",
    "NeverPolicy",
    "PeriodicPolicy",
    "PolicyObservation",
    "RateControlledPolicy",
    "RandomPolicy",
    "RequestPolicy",
    "ThresholdRule",
    "build_policy",
    "calibrate_rule",
    "calibrate_threshold",
    "observation_features",
    "request_features",
    "request_gain_labels",
]
