"""The sweep's replay of a policy on the test stream, every user at once.

`simulations.replay.replay` runs one policy copy per user, one `decide` per step: exact, and
the reference, but Python work per (user, step) and per point. Every policy the sweep builds
is a score read at the held state and a rule over it, so the test stream's score of a family
is one `[U, T, T]` table (made once, shared by the family's points: they differ only in their
threshold) and a point is a loop over the T steps with `[U]` arrays:

- random: each user's `spawn` stream, one draw per step;
- periodic: the held list's age against `m`;
- consistency, surprise, learned: the table at the held list against the rule; a split tie
  draws from the user's own stream, as its policy copy would;
- the rate controller: the inner score's quantile level against its moving level.

The decisions equal the per-user replay's (tests run both on every family); a policy of
another kind (a budget cap) falls back to the per-user replay.
"""

from __future__ import annotations

import numpy as np

from device.fusion import Fusion, RankSigmoidFusion
from device.policies import (
    AlwaysPolicy,
    ConsistencyPolicy,
    LearnedPolicy,
    NeverPolicy,
    PeriodicPolicy,
    RandomPolicy,
    RateControlledPolicy,
    RequestPolicy,
)
from device.policies.control import quantile_level
from device.policies.surprise import build_request_measure
from simulations.replay import ReplayData, ReplayResult, replay
from simulations.replay.engine import replay_result
from simulations.request_rate.states import feature_rows, measure_table, to_table


class ScoreTables:
    """A stream's `[U, T, T]` request score per policy family, computed once and shared by the
    family's points (consistency and surprise measures by name, learned policies by model)."""

    def __init__(self, data: ReplayData) -> None:
        self.data = data
        self._tables: dict[str, np.ndarray] = {}
        self._learned: list[tuple[object, np.ndarray]] = []
        self._draws: dict[int, np.ndarray] = {}
        self._features: dict[object, np.ndarray] = {}

    def of(self, policy: RequestPolicy) -> np.ndarray | None:
        """The policy's score at every reachable state; None for a policy without one."""
        if isinstance(policy, ConsistencyPolicy):
            name = policy.measure.name
            if build_request_measure(name) != policy.measure:
                return None  # a measure configured otherwise than `measure_table` builds it
            if name not in self._tables:
                self._tables[name] = measure_table(self.data, name)
            return self._tables[name]
        if isinstance(policy, LearnedPolicy):
            for model, table in self._learned:  # the family's points share one model
                if model is policy.model:
                    return table
            rows = self._feature_rows(policy)
            table = to_table(self.data, policy.model.predict_proba(rows))
            self._learned.append((policy.model, table))
            return table
        return None

    def prepare(self, policies: list[RequestPolicy | None]) -> None:
        """Make every learned policy's table now (a controller's inner one included), the
        features of each feature set computed once and then let go (`[M, F]` float64, the
        largest temporary of the sweep's test stream)."""
        learned = [getattr(p, "inner", p) for p in policies]
        learned = [p for p in learned if isinstance(p, LearnedPolicy)]
        for config in dict.fromkeys(p.feature_config for p in learned):
            for policy in learned:
                if policy.feature_config == config:
                    self.of(policy)
            self._features.pop(config, None)

    def draws(self, seed: int) -> np.ndarray:
        """`[U, T]` each user's first T uniforms of the policy stream of `seed` (`user_draws`),
        shared by every point with that seed."""
        if seed not in self._draws:
            self._draws[seed] = user_draws(self.data.stream.users, seed, self.data.window)
        return self._draws[seed]

    def _feature_rows(self, policy: LearnedPolicy) -> np.ndarray:
        """Features of every reachable state, shared by learned policies of one feature set."""
        key = policy.feature_config
        if key not in self._features:
            self._features[key] = feature_rows(self.data, policy.feature_config)
        return self._features[key]


def user_draws(users: np.ndarray, seed: int, count: int) -> np.ndarray:
    """`[U, count]` the first `count` uniforms of each user's policy stream (`spawn(user)`:
    `default_rng([seed, user])`), in the order its `decide` calls would draw them."""
    out = np.empty((len(users), count))
    for row, user in enumerate(users):
        out[row] = np.random.default_rng([seed, int(user)]).random(count)
    return out


def batched_decisions(
    data: ReplayData, policy: RequestPolicy, tables: ScoreTables
) -> tuple[np.ndarray, np.ndarray] | None:
    """`[U, T]` requested and `[U, T]` list held after each decision for every user at once,
    equal to the per-user replay; None for a policy this does not know."""
    users, window = data.num_users, data.window
    rows = np.arange(users)
    held = np.zeros(users, dtype=np.int64)  # the initial list is list 0
    requested = np.zeros((users, window), dtype=bool)
    used = np.zeros((users, window), dtype=np.int64)
    decide = _step_rule(data, policy, tables)
    if decide is None:
        return None
    for t in range(window):
        wants = decide(t, rows, held)
        held = np.where(wants, t, held)
        requested[:, t], used[:, t] = wants, held
    return requested, used


def _step_rule(data: ReplayData, policy: RequestPolicy, tables: ScoreTables):
    """`decide(t, rows, held) -> [U] bool` for the policy's kind, or None."""
    kind = type(policy)
    if kind is NeverPolicy:
        return lambda t, rows, held: np.zeros(len(rows), dtype=bool)
    if kind is AlwaysPolicy:
        return lambda t, rows, held: np.ones(len(rows), dtype=bool)
    if kind is PeriodicPolicy:
        return lambda t, rows, held: (t - held) >= policy.m
    if kind is RandomPolicy:
        draws = tables.draws(policy.seed)
        return lambda t, rows, held: draws[:, t] < policy.p
    if kind is RateControlledPolicy:
        return _controlled_rule(policy, tables)
    if kind in (ConsistencyPolicy, LearnedPolicy):
        table = tables.of(policy)
        return None if table is None else _threshold_rule(data, policy, table, tables)
    return None


def _threshold_rule(data: ReplayData, policy, table: np.ndarray, tables: ScoreTables):
    """Score at the held state against θ; a split tie draws the user's next uniform."""
    threshold, tie_prob = policy.threshold, policy.tie_prob
    split = 0.0 < tie_prob < 1.0
    draws = tables.draws(policy.seed) if split else None
    drawn = np.zeros(data.num_users, dtype=np.int64)  # uniforms each user has used

    def decide(t: int, rows: np.ndarray, held: np.ndarray) -> np.ndarray:
        scores = table[rows, t, held]
        tie = scores == threshold
        if split:
            wins = draws[rows, drawn] < tie_prob  # at most T ties: never past the stream
            drawn[:] += tie  # a policy copy draws once per tie, whatever it decides
            tie &= wins
        elif tie_prob == 0.0:
            tie[:] = False
        return (scores > threshold) | tie

    return decide


def _controlled_rule(policy: RateControlledPolicy, tables: ScoreTables):
    """The inner score's quantile level against the controller's level after the requests
    so far (`RateControlledPolicy.decide`)."""
    inner = tables.of(policy.inner)
    if inner is None:
        return None
    levels = quantile_level(inner, policy.quantiles)
    made: list[np.ndarray] = []  # requests so far per device, as a one-slot box

    def decide(t: int, rows: np.ndarray, held: np.ndarray) -> np.ndarray:
        count = made[0] if made else np.zeros(len(rows), dtype=np.int64)
        wants = levels[rows, t, held] >= policy.threshold_level(count, t)
        made[:] = [count + wants]
        return wants

    return decide


def replay_batched(
    data: ReplayData,
    policy: RequestPolicy,
    fusion: Fusion | None = None,
    label: str | None = None,
    tables: ScoreTables | None = None,
) -> ReplayResult:
    """`simulations.replay.replay` with every user at once (module docstring); the per-user
    replay for a policy of another kind."""
    fusion = RankSigmoidFusion() if fusion is None else fusion
    tables = ScoreTables(data) if tables is None else tables
    decisions = batched_decisions(data, policy, tables)
    if decisions is None:
        return replay(data, policy, fusion, label)
    return replay_result(data, policy, fusion, label, *decisions)
