"""The rule policies: never, always, random, periodic, consistency (LSC4Rec), budget."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from device.consistency import ConsistencyMeasure
from device.policies.base import PolicyObservation, RequestPolicy
from device.policies.calibration import ThresholdRule, calibrate_rule, calibrate_threshold
from device.policies.surprise import SurpriseMeasure, build_request_measure


@dataclass(eq=False)
class NeverPolicy(RequestPolicy):
    """Never requests: every step reranks the initial list."""

    name: ClassVar[str] = "never"

    def decide(self, obs: PolicyObservation) -> bool:
        return False


@dataclass(eq=False)
class AlwaysPolicy(RequestPolicy):
    """Requests at every step: the cloud always sees the up-to-date history."""

    name: ClassVar[str] = "always"

    def decide(self, obs: PolicyObservation) -> bool:
        return True


@dataclass(eq=False)
class RandomPolicy(RequestPolicy):
    """Requests with probability `p` at each step (LSC4Rec's baseline at a matched rate)."""

    name: ClassVar[str] = "random"
    p: float = 0.1  # request probability per step = the expected request rate

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {self.p}")
        super().__post_init__()

    @property
    def knob(self) -> float:
        return self.p

    def decide(self, obs: PolicyObservation) -> bool:
        return bool(self.rng.random() < self.p)


@dataclass(eq=False)
class PeriodicPolicy(RequestPolicy):
    """Requests once the cached list is `m` steps old: `steps_since_request >= m`.

    With requests that succeed, they fall on steps m, 2m, 3m, … of the stream.
    """

    name: ClassVar[str] = "periodic"
    m: int = 5  # steps between requests; rate ≈ 1 / m

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        super().__post_init__()

    @property
    def knob(self) -> float:
        return float(self.m)

    def decide(self, obs: PolicyObservation) -> bool:
        return obs.steps_since_request >= self.m


@dataclass(eq=False)
class ConsistencyPolicy(RequestPolicy):
    """Requests when a request measure reaches θ (LSC4Rec's intelligent request).

    The measure is a list-consistency measure (`device.consistency`, LSC4Rec's rank
    difference by default) or a surprise measure (`device.policies.surprise`).
    `decide(obs)` is `measure.observe(obs) >= threshold` (exact ties request with
    probability `tie_prob`, 1 by default). `calibrate` sets θ for a target request rate.
    """

    name: ClassVar[str] = "consistency"
    # a measure or its name in MEASURES or SURPRISE_MEASURES
    measure: ConsistencyMeasure | SurpriseMeasure | str = "rank_diff"
    threshold: float = 0.0  # θ on the measure's scale; higher = fewer requests
    tie_prob: float = 1.0  # share of scores exactly at θ that request

    def __post_init__(self) -> None:
        if isinstance(self.measure, str):
            self.measure = build_request_measure(self.measure)
        ThresholdRule(self.threshold, self.tie_prob)  # validates both
        super().__post_init__()

    @property
    def knob(self) -> float:
        return self.threshold

    @property
    def label(self) -> str:
        return f"{self.measure.kind}[{self.measure.name}]({self.threshold:g})"

    def score(self, obs: PolicyObservation) -> float:
        """The measure's score for this step (higher = more reason to request)."""
        return self.measure.observe(obs)

    def decide(self, obs: PolicyObservation) -> bool:
        rule = ThresholdRule(self.threshold, self.tie_prob)
        return bool(rule.decide(np.array([self.score(obs)]), self.rng)[0])

    def calibrate(self, scores: Any, target_rate: float, split_ties: bool = True) -> None:
        """Set θ (and `tie_prob`) so that `target_rate` of the `scores` would request.

        Args:
            scores: this measure's scores over a validation stream.
            target_rate: wanted request rate in [0, 1].
            split_ties: randomise exact ties to hit the rate (else closest `score >= θ`).
        """
        if split_ties:
            rule = calibrate_rule(scores, target_rate)
            self.threshold, self.tie_prob = rule.threshold, rule.tie_prob
        else:
            self.threshold, self.tie_prob = calibrate_threshold(scores, target_rate), 1.0


@dataclass(eq=False)
class BudgetPolicy(RequestPolicy):
    """At most `max_requests` requests in any `window` consecutive steps, on top of `inner`.

    The inner policy is asked at every step (so its own state moves on as if unwrapped);
    its request is let through only while the window still has budget. Approved requests
    count against the budget whether or not the fetch then succeeds: the budget bounds
    traffic, and a failed call costs traffic too.
    """

    name: ClassVar[str] = "budget"
    inner: RequestPolicy = field(default_factory=lambda: AlwaysPolicy())  # the policy to cap
    max_requests: int = 1  # r: requests allowed per window
    window: int = 10  # w: window length in steps

    def __post_init__(self) -> None:
        if self.max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, got {self.max_requests}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        super().__post_init__()

    @property
    def knob(self) -> float | None:
        return self.inner.knob

    @property
    def label(self) -> str:
        return f"{self.inner.label}+budget({self.max_requests}/{self.window})"

    def reset(self) -> None:
        super().reset()
        self.inner.reset()
        self._approved: deque[int] = deque()

    def spawn(self, key: int) -> BudgetPolicy:
        clone = super().spawn(key)
        clone.inner = self.inner.spawn(key)
        return clone

    def decide(self, obs: PolicyObservation) -> bool:
        wanted = self.inner.decide(obs)
        while self._approved and self._approved[0] <= obs.step - self.window:
            self._approved.popleft()  # left the window [step − w + 1, step]
        if not wanted or len(self._approved) >= self.max_requests:
            return False
        self._approved.append(obs.step)
        return True
