"""Thresholds from target request rates: quantiles over validation-stream scores, with
exact ties randomised (`ThresholdRule`) so few-valued scores still hit the rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# ---------------------------------------------------------------- thresholds and calibration


def _check_rate(target_rate: float) -> None:
    if not 0.0 <= target_rate <= 1.0:
        raise ValueError(f"target_rate must be in [0, 1], got {target_rate}")


def _check_scores(scores: Any) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("need at least one score to calibrate on")
    if not np.isfinite(scores).all():
        raise ValueError("calibration scores must be finite")
    return scores


def calibrate_threshold(scores: Any, target_rate: float) -> float:
    """The threshold θ whose rate `mean(scores >= θ)` is closest to `target_rate`.

    Candidates are the distinct score values (a θ between two equal scores would be
    meaningless) plus `+inf` (rate 0). With many distinct values this is the
    `1 − target_rate` quantile; with heavy ties it is the closest achievable rate — use
    `calibrate_rule` to split a tie and hit the target exactly.

    Args:
        scores: validation-stream scores of the policy (any shape).
        target_rate: wanted share of steps with a request, in [0, 1].
    Raises:
        ValueError: empty or non-finite scores, or a rate outside [0, 1].
    """
    _check_rate(target_rate)
    scores = _check_scores(scores)
    ascending = np.sort(scores)
    values = np.unique(ascending)  # [V] ascending
    rates = 1.0 - np.searchsorted(ascending, values, side="left") / ascending.size  # [V]
    values = np.append(values, np.inf)
    rates = np.append(rates, 0.0)
    return float(values[np.argmin(np.abs(rates - target_rate))])


@dataclass(frozen=True)
class ThresholdRule:
    """Request when `score > threshold`, and with probability `tie_prob` when it is equal.

    `tie_prob = 1` gives the plain rule `score >= threshold`.
    """

    threshold: float = 0.0  # θ, on the policy's score scale
    tie_prob: float = 1.0  # share of exact ties that request; splits a tie to hit a rate

    def __post_init__(self) -> None:
        if np.isnan(self.threshold):
            raise ValueError("threshold must not be NaN")
        if not 0.0 <= self.tie_prob <= 1.0:
            raise ValueError(f"tie_prob must be in [0, 1], got {self.tie_prob}")

    def decide(self, scores: Any, rng: np.random.Generator) -> np.ndarray:
        """`[U]` bool decisions for `[U]` scores; the rng is drawn only for partial ties."""
        scores = np.asarray(scores, dtype=np.float64)
        above = scores > self.threshold
        tie = scores == self.threshold
        if 0.0 < self.tie_prob < 1.0 and tie.any():
            tie &= rng.random(scores.shape) < self.tie_prob
        elif self.tie_prob == 0.0:
            tie[...] = False
        return above | tie


def calibrate_rule(scores: Any, target_rate: float) -> ThresholdRule:
    """A `ThresholdRule` whose expected rate on `scores` equals `target_rate` exactly.

    θ is the score at the target quantile; of the scores equal to θ, the share needed to
    make up the rate requests: `tie_prob = (target·n − #(s > θ)) / #(s = θ)`.

    Raises:
        ValueError: empty or non-finite scores, or a rate outside [0, 1].
    """
    _check_rate(target_rate)
    scores = _check_scores(scores)
    descending = np.sort(scores)[::-1]
    wanted = target_rate * descending.size
    index = min(int(np.floor(wanted)), descending.size - 1)
    threshold = float(descending[index])
    above = int((scores > threshold).sum())
    ties = int((scores == threshold).sum())
    tie_prob = float(np.clip((wanted - above) / ties, 0.0, 1.0))
    return ThresholdRule(threshold, tie_prob)
