"""Rules calibrated to a target request rate on the validation stream (the quantile level
bisected against the replayed rate), periodic knobs, and the learned policy's fit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from device.fusion import Fusion
from device.policies import (
    FeatureConfig,
    LogisticRegression,
    ThresholdRule,
    calibrate_rule,
    request_gain_labels,
)
from simulations.replay import (
    ReplayData,
)
from simulations.request_rate.states import feature_rows, reachable, state_index, to_table

# ---------------------------------------------------------------- calibration


def simulate_rule(
    table: np.ndarray, rule: ThresholdRule, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Replay a threshold rule on a `[U, T, T]` score table, all users at once.

    Returns:
        `[U, T]` requested and `[U, T]` list held after each decision.
    """
    requested, used, _ = _simulate(table, rule, seed)
    return requested, used


def _simulate(
    table: np.ndarray, rule: ThresholdRule, seed: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """`simulate_rule` and whether a visited state sat exactly at θ (only then can a split
    tie draw a random number)."""
    users, window = table.shape[:2]
    rng = np.random.default_rng(seed)
    held = np.zeros(users, dtype=np.int64)
    requested = np.zeros((users, window), dtype=bool)
    used = np.zeros((users, window), dtype=np.int64)
    tied = False
    for t in range(window):
        scores = table[np.arange(users), t, held]  # [U]
        tied = tied or bool((scores == rule.threshold).any())
        wants = rule.decide(scores, rng)
        held = np.where(wants, t, held)
        requested[:, t], used[:, t] = wants, held
    return requested, used, tied


def expected_rate(table: np.ndarray, rule: ThresholdRule, seed: int = 0, draws: int = 8) -> float:
    """Request rate of `rule` on the stream of `table`, averaged over `draws` tie-split streams.

    Only split ties draw random numbers; averaging keeps the calibration from fitting one
    particular draw (each user's policy copy draws its own numbers on replay). A first pass
    that meets no tie is what every draw would replay: it stands for all of them.
    """
    draws = draws if 0.0 < rule.tie_prob < 1.0 else 1  # no ties to split: one pass is exact
    requested, _, tied = _simulate(table, rule, seed)
    rates = [requested.mean()]
    if not tied:  # no number was drawn: every draw replays alike (the same float sum)
        return float(np.mean(rates * draws))
    rates += [simulate_rule(table, rule, seed + i)[0].mean() for i in range(1, draws)]
    return float(np.mean(rates))


def calibrate_on_stream(
    table: np.ndarray, target_rate: float, seed: int = 0, steps: int = 30
) -> tuple[ThresholdRule, float]:
    """A rule whose replayed request rate on the stream of `table` is closest to the target.

    The rule is a quantile of the scores over every reachable state (`calibrate_rule`, ties
    split); the quantile level is bisected against the replayed rate (`expected_rate`),
    starting from the plain quantile at the target rate.

    Returns:
        the rule and the (expected) rate it achieves on this stream.
    Raises:
        ValueError: a rate outside [0, 1] or non-finite scores.
    """
    pool = table[:, reachable(table.shape[1])].ravel()

    def rate_of(level: float) -> tuple[ThresholdRule, float]:
        rule = calibrate_rule(pool, level)
        return rule, expected_rate(table, rule, seed)

    best_rule, best_rate = rate_of(target_rate)
    low, high = 0.0, 1.0
    for _ in range(steps):
        if abs(best_rate - target_rate) < 1e-9:
            break
        level = (low + high) / 2.0
        rule, rate = rate_of(level)
        if abs(rate - target_rate) < abs(best_rate - target_rate):
            best_rule, best_rate = rule, rate
        low, high = (level, high) if rate < target_rate else (low, level)
    return best_rule, best_rate


def simulate_controlled(
    levels: np.ndarray, level: float, gain: float, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Replay the rate controller (`RateControlledPolicy`) on a `[U, T, T]` table of the inner
    score's quantile levels, all users at once.

    Returns:
        `[U, T]` requested and `[U, T]` list held after each decision.
    """
    users, window = levels.shape[:2]
    held = np.zeros(users, dtype=np.int64)
    made = np.zeros(users)  # requests so far, per device
    requested = np.zeros((users, window), dtype=bool)
    used = np.zeros((users, window), dtype=np.int64)
    for t in range(window):
        wants = levels[np.arange(users), t, held] >= level + gain * (made - rate * t)
        made += wants
        held = np.where(wants, t, held)
        requested[:, t], used[:, t] = wants, held
    return requested, used


def calibrate_controlled(
    levels: np.ndarray, target_rate: float, gain: float, steps: int = 40
) -> tuple[float, float]:
    """The controller's base level whose replayed rate on the stream of `levels` (`[U, T, T]`
    quantile levels of the inner score) is closest to the target, by bisection.

    Returns:
        the level and the rate it achieves on this stream.
    """

    def rate_of(level: float) -> float:
        return float(simulate_controlled(levels, level, gain, target_rate)[0].mean())

    low, high = -1.0 - gain, 2.0 + gain  # every step requests at `low`, none at `high`
    best, best_rate = high, rate_of(high)
    for _ in range(steps):
        level = (low + high) / 2.0
        rate = rate_of(level)
        if abs(rate - target_rate) < abs(best_rate - target_rate):
            best, best_rate = level, rate
        low, high = (level, high) if rate > target_rate else (low, level)
    return best, best_rate


GAINS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # the controller gains `choose_gain` tries
DRIFT_OVERSHOOT = 0.2  # the drift the controller must absorb: the plain policy 20% over …
DRIFT_ABSORBED = 0.05  # … brought back to within 5% of the target


def choose_gain(levels: np.ndarray, target_rate: float) -> tuple[float, dict[str, float]]:
    """The smallest controller gain that absorbs a score drift on the validation stream.

    The validation stream has no drift of its own (the plain policy is calibrated on it), so
    one is made: every quantile level is raised by the ε that makes the plain policy request
    `DRIFT_OVERSHOOT` more than its target. Each gain of `GAINS`, calibrated on the
    unshifted stream, is replayed on the shifted one; the smallest that stays within
    `DRIFT_ABSORBED` of the target wins (the largest if none does). Small gains cost less
    accuracy: the controller only overrides the policy as much as the drift demands.

    Returns:
        the gain and what was measured (ε, each gain's rate under the drift).
    """
    plain, _ = calibrate_controlled(levels, target_rate, 0.0)

    def drifted_rate(gain: float, level: float, eps: float) -> float:
        return float(simulate_controlled(levels + eps, level, gain, target_rate)[0].mean())

    low, high = 0.0, 1.0  # bisect ε: the plain rate grows with it
    for _ in range(30):
        eps = (low + high) / 2.0
        if drifted_rate(0.0, plain, eps) < target_rate * (1.0 + DRIFT_OVERSHOOT):
            low = eps
        else:
            high = eps
    eps = (low + high) / 2.0
    found = {"drift": eps}
    for gain in GAINS:
        level, _ = calibrate_controlled(levels, target_rate, gain)
        rate = drifted_rate(gain, level, eps)
        found[f"rate_at_gain_{gain:g}"] = rate
        if abs(rate / target_rate - 1.0) <= DRIFT_ABSORBED:
            return gain, found
    return GAINS[-1], found


def periodic_knobs(rates: Sequence[float], window: int) -> list[tuple[int, float]]:
    """`(m, target rate)`: per target, the m whose rate on a T-step stream,
    ⌊(T−1)/m⌋ / T, is nearest (ties to the smaller m; rate 0 left out), deduplicated.

    Raises:
        ValueError: `window` < 2 (no periodic policy requests on a 1-step stream).
    """
    if window < 2:
        raise ValueError(f"periodic requests need a stream of >= 2 steps, got {window}")
    achievable = {m: ((window - 1) // m) / window for m in range(1, window)}
    achievable = {m: rate for m, rate in achievable.items() if rate > 0}  # 0 would be `never`
    chosen = {min(achievable, key=lambda m: (abs(achievable[m] - r), m)) for r in rates}
    # Label each m with the target its rate is nearest to (m = 5 on T = 10 serves 0.05 and 0.1).
    nearest = {m: min(rates, key=lambda r: abs(achievable[m] - r)) for m in chosen}
    return [(m, nearest[m]) for m in sorted(chosen, reverse=True)]


def fit_learned(
    valid: ReplayData,
    fusion: Fusion,
    config: FeatureConfig | None = None,
    label: str = "rank",
    features: np.ndarray | None = None,
) -> tuple[LogisticRegression, np.ndarray, dict[str, float]]:
    """Train the learned policy's classifier on the validation stream (`label`: what a useful
    request is, see `request_gain_labels`; `features`: `feature_rows(valid, config)` when the
    caller already has them, e.g. to fit several labels).

    Returns:
        the fitted classifier, its `[U, T, T]` probability table on the validation stream,
        and training stats (examples, positive share).
    """
    config = FeatureConfig() if config is None else config
    rows, steps, held = state_index(valid)
    ranks = valid.fused_ranks(fusion)  # [U, T, T]
    labels = request_gain_labels(ranks[rows, steps, held], ranks[rows, steps, steps], label)
    features = feature_rows(valid, config) if features is None else features  # [M, F]
    model = LogisticRegression().fit(features, labels)
    stats = {"examples": int(len(labels)), "positive_share": float(labels.mean())}
    return model, to_table(valid, model.predict_proba(features)), stats
