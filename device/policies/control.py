"""A per-device rate controller: a threshold policy whose threshold follows the device's own
request count, so that a fleet stays at its target rate when the scores drift.

A threshold policy calibrated on the validation stream overshoots on new clicks when its score
runs higher there (the learned policy asked for 0.1 requested 0.119 on ml-100k). The
controller reads the inner policy's score through its validation distribution (the score's
quantile level `u` in [0, 1], a table of `QUANTILES + 1` scores stored with the policy) and
requests when

    u >= level + gain · (requests so far − target_rate · steps so far)

so each request beyond the device's share raises the bar and each step without one lowers it:
a device that has spent its share waits for a clearly better moment, one that has not spent
it takes a moderate one. `level` is calibrated on the validation stream with the controller in
the loop; `gain` = 0 is the plain policy. The controller is a policy like any other: replays,
live devices and bundles run it alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from device.policies.base import PolicyObservation, RequestPolicy
from device.policies.rules import ConsistencyPolicy

QUANTILES = 200  # resolution of the stored score distribution


def score_quantiles(scores: Any, count: int = QUANTILES) -> tuple[float, ...]:
    """`count + 1` scores at quantile levels 0, 1/count, …, 1 of `scores`."""
    values = np.asarray(scores, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite scores to take quantiles of")
    return tuple(float(q) for q in np.quantile(values, np.linspace(0.0, 1.0, count + 1)))


def quantile_level(scores: Any, quantiles: Any) -> np.ndarray:
    """The quantile level in [0, 1] of each score under the stored distribution (linear
    between stored quantiles; scores at a run of equal quantiles get the run's top level)."""
    table = np.asarray(quantiles, np.float64)
    levels = np.linspace(0.0, 1.0, len(table))
    # np.interp needs increasing x: for repeated quantiles take the highest level of the run
    unique, last = np.unique(table[::-1], return_index=True)
    top = levels[::-1][last]
    return np.interp(np.asarray(scores, np.float64), unique, top)


@dataclass(eq=False)
class RateControlledPolicy(RequestPolicy):
    """A threshold policy (consistency, surprise or learned) under a per-device rate controller.

    The inner policy's own threshold is not used: its score's quantile level is compared with
    the controlled level (module docstring).
    """

    name: ClassVar[str] = "rate_controlled"
    inner: RequestPolicy = field(default_factory=ConsistencyPolicy)  # a threshold policy
    target_rate: float = 0.1  # r: the share of steps the device should request at
    quantiles: tuple[float, ...] = (0.0, 1.0)  # the inner score's validation quantiles
    level: float = 0.9  # base quantile level (calibrated on validation with the controller)
    gain: float = 0.5  # level change per request above the device's share (0 = no control)

    def __post_init__(self) -> None:
        if not 0.0 < self.target_rate <= 1.0:
            raise ValueError(f"target_rate must be in (0, 1], got {self.target_rate}")
        if self.gain < 0.0:
            raise ValueError(f"gain must be >= 0, got {self.gain}")
        if not callable(getattr(self.inner, "score", None)):
            raise TypeError(f"a rate controller wraps a threshold policy, not {self.inner.name!r}")
        self.quantiles = tuple(float(q) for q in self.quantiles)
        if len(self.quantiles) < 2 or np.any(np.diff(self.quantiles) < 0):
            raise ValueError("quantiles must be >= 2 non-decreasing scores")
        super().__post_init__()

    @property
    def knob(self) -> float:
        return self.level

    @property
    def label(self) -> str:
        return f"{self.inner.label}+control({self.target_rate:g})"

    def reset(self) -> None:
        super().reset()
        self.inner.reset()
        self._requests, self._steps = 0, 0

    def spawn(self, key: int) -> RateControlledPolicy:
        clone = super().spawn(key)
        clone.inner = self.inner.spawn(key)
        return clone

    def threshold_level(self, requests: Any, steps: Any) -> Any:
        """The level a score must reach after `requests` requests in `steps` steps."""
        return self.level + self.gain * (requests - self.target_rate * steps)

    def decide(self, obs: PolicyObservation) -> bool:
        u = float(quantile_level(self.inner.score(obs), self.quantiles))
        wanted = u >= self.threshold_level(self._requests, self._steps)
        self._steps += 1
        self._requests += int(wanted)
        return bool(wanted)
