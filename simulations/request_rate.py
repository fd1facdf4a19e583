"""The main experiment: request rate vs accuracy of the device–cloud system (LSC4Rec's curves).

Curves (one point per target request rate, default 0.05, 0.1, 0.2, 0.3, 0.5, 0.8):

    random(p)             p = the target rate (LSC4Rec's baseline)
    periodic(m)           the m whose rate on a T-step stream, ⌊(T−1)/m⌋ / T, is nearest
    consistency[measure]  rank_diff, kendall, topk, rbo, each calibrated to the rate
    learned               logistic regression on device features, calibrated to the rate

References: `never` (the SRM reranking the never-refreshed initial list), `always` (a fresh
list every step, fused), `llm_only` (a fresh list every step in the LLM's own order) and
`srm_only` (no cloud at all: the SRM ranks every item, history masked).

Calibration never looks at the test stream. It runs on the *validation stream* (see
`simulations.replay.stream_from_split`: the last T clicks the device knows before the test
stream, ending with the validation target). A policy's rate depends on its own requests
(a fresh list lowers the disagreement that follows), so a plain quantile of scores seen
under one trajectory misses the target; instead the quantile level is bisected until a
replay of the validation stream under the rule requests at the target rate. The learned
policy trains on every reachable (step, held list) state of the validation stream with
label "a fresh list would rank the target higher" (`request_gain_labels`).

Each point reports the achieved request rate and HR/NDCG@5/10/20 with a percentile
bootstrap interval over users (users resampled, the same draws for every point, so
differences between points are paired).

Letters used in shape comments:
    U  stream users   T  stream steps   N  list length   M  (user, step, list) states
    F  features       B  bootstrap draws
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from device.consistency import MEASURES, build_measure
from device.fusion import FUSIONS, Fusion, LLMOnlyFusion, build_fusion
from device.policies import (
    AlwaysPolicy,
    ConsistencyPolicy,
    FeatureConfig,
    LearnedPolicy,
    LogisticRegression,
    NeverPolicy,
    PeriodicPolicy,
    RandomPolicy,
    RequestPolicy,
    ThresholdRule,
    calibrate_rule,
    request_features,
    request_gain_labels,
)
from shared.metrics import ndcg
from shared.splits import StreamSplit
from simulations.replay import (
    KS,
    ReplayConfig,
    ReplayData,
    ReplayResult,
    prepare_replay,
    reference_result,
    replay,
    stream_from_split,
)

FAMILIES = ("random", "periodic", "consistency", "learned")
CALIBRATED = ("consistency", "learned")
REFERENCES = ("never", "always", "llm_only", "srm_only")
METRICS = tuple(f"{m}@{k}" for m in ("NDCG", "HR") for k in KS)


@dataclass(frozen=True)
class RequestRateConfig:
    """What the sweep runs and how it reports."""

    target_rates: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)  # LSC4Rec's ratios
    families: tuple[str, ...] = FAMILIES  # policy curves to sweep
    measures: tuple[str, ...] = ("rank_diff", "kendall", "topk", "rbo")  # consistency curves
    fusion: str = "lsc4rec"  # the device's fusion (device.fusion.FUSIONS)
    seed: int = 0  # policies' random streams, calibration ties and bootstrap draws
    bootstrap_draws: int = 1000  # user resamples per interval
    confidence: float = 0.95  # coverage of the intervals
    calibration_steps: int = 30  # bisection steps on the quantile level (2^-30: exact enough)
    goal_max_rate: float = 0.3  # the goal: at rates up to this …
    goal_ratio: float = 0.95  # … reach this share of always-request NDCG@10

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_rates", tuple(float(r) for r in self.target_rates))
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "measures", tuple(self.measures))
        if not self.target_rates or not all(0.0 <= r <= 1.0 for r in self.target_rates):
            raise ValueError(f"target_rates must be in [0, 1], got {self.target_rates}")
        for family in self.families:
            if family not in FAMILIES:
                raise ValueError(f"unknown policy {family!r}; valid names: {', '.join(FAMILIES)}")
        for measure in self.measures:
            if measure not in MEASURES:
                raise ValueError(f"unknown measure {measure!r}; valid: {', '.join(MEASURES)}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; valid: {', '.join(FUSIONS)}")
        if self.bootstrap_draws < 1 or self.calibration_steps < 1:
            raise ValueError("bootstrap_draws and calibration_steps must be >= 1")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


# ---------------------------------------------------------------- the two streams


def prepare_streams(
    split: StreamSplit,
    generator: Any,
    model: Any,
    replay_config: ReplayConfig | None = None,
    cache_dir: str | Path | None = None,
    dataset: str = "",
    valid_window: int | None = None,
    progress: bool = False,
) -> tuple[ReplayData, ReplayData]:
    """Replay data of the validation and the test stream (lists and SRM scores, cached).

    The validation stream is prepared first; its runner states carry over to the test
    stream, which starts where it ends. Only the test stream gets the SRM-only full ranking.

    Returns:
        `(valid, test)`.
    """
    resume: dict = {}
    out = []
    for role, window in (("valid", valid_window), ("test", None)):
        stream = stream_from_split(split, role, window)
        out.append(
            prepare_replay(
                stream,
                generator,
                model,
                replay_config,
                cache_dir,
                dataset,
                full_ranking=role == "test",
                resume=resume,
                progress=progress,
            )
        )
    return out[0], out[1]


# ---------------------------------------------------------------- reachable device states


def reachable(window: int) -> np.ndarray:
    """`[T, T]` bool: list `j` can be held at the decision of step `t` (j < t, or 0 at t = 0)."""
    mask = np.tri(window, k=-1, dtype=bool)
    mask[0, 0] = True
    return mask


def state_index(data: ReplayData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[M]` (row, step, held list) of every reachable decision state of the stream."""
    steps, held = np.nonzero(reachable(data.window))
    rows = np.repeat(np.arange(data.num_users), len(steps))
    return rows, np.tile(steps, data.num_users), np.tile(held, data.num_users)


def _recent_clicks(data: ReplayData, rows, steps, k: int) -> np.ndarray:
    """`[M, k]` the last k clicks before each state's step, left-padded with 0."""
    out = np.zeros((len(rows), k), dtype=np.int64)
    for i, (row, step) in enumerate(zip(rows, steps)):
        tail = data.stream.history(row, step)[-k:]
        out[i, k - len(tail) :] = tail
    return out


def measure_table(data: ReplayData, measure: str, chunk: int = 2048) -> np.ndarray:
    """`[U, T, T]` a consistency measure's score at every reachable state (NaN elsewhere)."""
    scorer = build_measure(measure)
    rows, steps, held = state_index(data)
    scores = np.empty(len(rows))
    for lo in range(0, len(rows), chunk):
        r, s, h = rows[lo : lo + chunk], steps[lo : lo + chunk], held[lo : lo + chunk]
        scores[lo : lo + chunk] = scorer(data.logits[r, s, h], data.valid[r, s, h])
    table = np.full((data.num_users, data.window, data.window), np.nan)
    table[rows, steps, held] = scores
    return table


def feature_rows(data: ReplayData, config: FeatureConfig, chunk: int = 2048) -> np.ndarray:
    """`[M, F]` the learned policy's features at every reachable state (`state_index` order)."""
    rows, steps, held = state_index(data)
    recent = _recent_clicks(data, rows, steps, config.recent_k)
    parts = []
    for lo in range(0, len(rows), chunk):
        r, s, h = rows[lo : lo + chunk], steps[lo : lo + chunk], held[lo : lo + chunk]
        items = data.lists.items[r, h]  # [m, N]
        age = s - h  # the held list was fetched at step h
        valid = data.valid[r, s, h]
        logits = data.logits[r, s, h]
        parts.append(request_features(items, logits, valid, recent[lo : lo + chunk], age, config))
    return np.concatenate(parts)


def to_table(data: ReplayData, values: np.ndarray) -> np.ndarray:
    """`[M]` values in `state_index` order as a `[U, T, T]` table (NaN where unreachable)."""
    rows, steps, held = state_index(data)
    table = np.full((data.num_users, data.window, data.window), np.nan)
    table[rows, steps, held] = values
    return table


# ---------------------------------------------------------------- calibration


def simulate_rule(
    table: np.ndarray, rule: ThresholdRule, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Replay a threshold rule on a `[U, T, T]` score table, all users at once.

    Returns:
        `[U, T]` requested and `[U, T]` list held after each decision.
    """
    users, window = table.shape[:2]
    rng = np.random.default_rng(seed)
    held = np.zeros(users, dtype=np.int64)
    requested = np.zeros((users, window), dtype=bool)
    used = np.zeros((users, window), dtype=np.int64)
    for t in range(window):
        wants = rule.decide(table[np.arange(users), t, held], rng)  # [U]
        held = np.where(wants, t, held)
        requested[:, t], used[:, t] = wants, held
    return requested, used


def expected_rate(table: np.ndarray, rule: ThresholdRule, seed: int = 0, draws: int = 8) -> float:
    """Request rate of `rule` on the stream of `table`, averaged over `draws` tie-split streams.

    Only split ties draw random numbers; averaging keeps the calibration from fitting one
    particular draw (each user's policy copy draws its own numbers on replay).
    """
    draws = draws if 0.0 < rule.tie_prob < 1.0 else 1  # no ties to split: one pass is exact
    return float(np.mean([simulate_rule(table, rule, seed + i)[0].mean() for i in range(draws)]))


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
    valid: ReplayData, fusion: Fusion, config: FeatureConfig | None = None
) -> tuple[LogisticRegression, np.ndarray, dict[str, float]]:
    """Train the learned policy's classifier on the validation stream.

    Returns:
        the fitted classifier, its `[U, T, T]` probability table on the validation stream,
        and training stats (examples, positive share).
    """
    config = FeatureConfig() if config is None else config
    rows, steps, held = state_index(valid)
    ranks = valid.fused_ranks(fusion)  # [U, T, T]
    labels = request_gain_labels(ranks[rows, steps, held], ranks[rows, steps, steps])
    features = feature_rows(valid, config)  # [M, F]
    model = LogisticRegression().fit(features, labels)
    stats = {"examples": int(len(labels)), "positive_share": float(labels.mean())}
    return model, to_table(valid, model.predict_proba(features)), stats


# ---------------------------------------------------------------- the points


@dataclass
class PolicyPoint:
    """One point of a curve: the policy, how it was set, and what it did on validation."""

    family: str  # "random", "periodic", "consistency[kendall]", "learned", or a reference
    policy: RequestPolicy | None  # None for srm_only (no device session at all)
    fusion: Fusion | None = None
    target_rate: float | None = None  # the calibration target (None for references)
    valid_rate: float | None = None  # replayed rate on the validation stream
    valid_ndcg10: float | None = None  # NDCG@10 on the validation stream (selects the best)


def _calibrated_points(
    family: str,
    policy: ConsistencyPolicy | LearnedPolicy,
    table: np.ndarray,
    valid: ReplayData,
    fusion: Fusion,
    config: RequestRateConfig,
) -> list[PolicyPoint]:
    """Copies of a threshold policy (consistency, learned), one per target rate."""
    ranks = valid.fused_ranks(fusion)
    steps = np.arange(valid.window)[None, :]
    points = []
    for rate in config.target_rates:
        rule, achieved = calibrate_on_stream(table, rate, config.seed, config.calibration_steps)
        _, used = simulate_rule(table, rule, config.seed)
        ndcg10 = float(ndcg(ranks[np.arange(valid.num_users)[:, None], steps, used], 10).mean())
        calibrated = replace(policy, threshold=rule.threshold, tie_prob=rule.tie_prob)
        points.append(PolicyPoint(family, calibrated, fusion, rate, achieved, ndcg10))
    return points


def build_points(
    valid: ReplayData, window: int, config: RequestRateConfig, progress: bool = False
) -> tuple[list[PolicyPoint], dict[str, Any]]:
    """Every policy point of the sweep (calibrated on `valid`) and calibration notes.

    Args:
        valid: the validation stream's replay data.
        window: `T` of the test stream (sets the periodic knobs).
        config: the sweep.
        progress: print what is being calibrated.
    """
    fusion = build_fusion(config.fusion)
    seed = config.seed
    points: list[PolicyPoint] = []
    notes: dict[str, Any] = {}
    if "random" in config.families:
        for rate in config.target_rates:
            points.append(PolicyPoint("random", RandomPolicy(p=rate, seed=seed), fusion, rate))
    if "periodic" in config.families:
        for m, rate in periodic_knobs(config.target_rates, window):
            points.append(PolicyPoint("periodic", PeriodicPolicy(m=m, seed=seed), fusion, rate))
    if "consistency" in config.families:
        for measure in config.measures:
            _say(progress, f"calibrating consistency[{measure}] on the validation stream")
            table = measure_table(valid, measure)
            policy = ConsistencyPolicy(measure=measure, seed=seed)
            points += _calibrated_points(
                f"consistency[{measure}]", policy, table, valid, fusion, config
            )
    if "learned" in config.families:
        _say(progress, "training the learned policy on the validation stream")
        model, table, notes["learned"] = fit_learned(valid, fusion)
        policy = LearnedPolicy(model=model, seed=seed)
        notes["learned"]["weights"] = model.to_dict()["weights"]
        points += _calibrated_points("learned", policy, table, valid, fusion, config)
    return points, notes


def reference_points(config: RequestRateConfig) -> list[PolicyPoint]:
    """never, always (fused), LLM-only at always, SRM-only without cloud."""
    fusion = build_fusion(config.fusion)
    return [
        PolicyPoint("never", NeverPolicy(seed=config.seed), fusion),
        PolicyPoint("always", AlwaysPolicy(seed=config.seed), fusion),
        PolicyPoint("llm_only", AlwaysPolicy(seed=config.seed), LLMOnlyFusion()),
        PolicyPoint("srm_only", None),
    ]


def _say(progress: bool, message: str) -> None:
    from shared.progress import progress_write

    progress_write(message, enabled=progress)


# ---------------------------------------------------------------- bootstrap and rows


def bootstrap_indices(num_users: int, draws: int, seed: int) -> np.ndarray:
    """`[B, U]` user resamples (with replacement), shared by every point so they pair up."""
    return np.random.default_rng([seed, 2024]).integers(0, num_users, size=(draws, num_users))


def bootstrap_interval(
    values: np.ndarray, indices: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of `[U]` per-user values and its percentile bootstrap interval.

    Args:
        values: `[U]` one value per user (e.g. the user's mean NDCG@10 over the stream).
        indices: `[B, U]` resamples from `bootstrap_indices`.
        confidence: interval coverage.
    Returns:
        `(mean, low, high)`.
    """
    values = np.asarray(values, dtype=np.float64)
    means = values[indices].mean(axis=1)  # [B]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(values.mean()), float(low), float(high)


def point_row(
    point: PolicyPoint, result: ReplayResult, indices: np.ndarray, confidence: float
) -> dict[str, Any]:
    """One table row: policy, knob, rates and every metric with its interval."""
    policy = point.policy
    row: dict[str, Any] = {
        "policy": point.family,
        "label": result.label,
        "fusion": point.fusion.name if point.fusion is not None else "none",
        "knob": None if policy is None or policy.knob is None else float(policy.knob),
        "tie_prob": getattr(policy, "tie_prob", None),
        "target_rate": point.target_rate,
        "valid_rate": point.valid_rate,
        "request_rate": result.request_rate,
    }
    user_metrics = result.user_metrics()
    for name in METRICS:
        mean, low, high = bootstrap_interval(user_metrics[name], indices, confidence)
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = mean, low, high
    return row


def run_point(test: ReplayData, point: PolicyPoint) -> ReplayResult:
    """Replay one point on the test stream (srm_only: the SRM's full ranking, no requests)."""
    if point.policy is None:
        return reference_result("srm_only", test, test.srm.full_ranks)
    label = point.family if point.family in REFERENCES else None
    return replay(test, point.policy, point.fusion, label=label)


# ---------------------------------------------------------------- goal check


def paired_difference(
    a: np.ndarray, b: np.ndarray, indices: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    """Mean of `a − b` over users and its bootstrap interval (same resamples: paired)."""
    return bootstrap_interval(np.asarray(a) - np.asarray(b), indices, confidence)


def goal_check(
    rows: list[dict[str, Any]],
    results: list[ReplayResult],
    points: list[PolicyPoint],
    indices: np.ndarray,
    config: RequestRateConfig,
) -> list[dict[str, Any]]:
    """Per target rate <= `goal_max_rate`: the best calibrated policy (picked on validation
    NDCG@10) against always (ratio), random at the same rate and never (paired intervals)."""
    by_family = {(p.family, p.target_rate): i for i, p in enumerate(points)}
    ref = {p.family: i for i, p in enumerate(points) if p.family in REFERENCES}
    user_ndcg = [r.user_metrics()["NDCG@10"] for r in results]
    out = []
    for rate in config.target_rates:
        calibrated = [
            i
            for i, p in enumerate(points)
            if p.target_rate == rate and p.family.split("[")[0] in CALIBRATED
        ]
        if rate > config.goal_max_rate or not calibrated or "always" not in ref:
            continue
        best = max(calibrated, key=lambda i: points[i].valid_ndcg10)
        check = {
            "target_rate": rate,
            "best": rows[best]["label"],
            "best_family": points[best].family,
            "best_request_rate": rows[best]["request_rate"],
            "best_NDCG@10": rows[best]["NDCG@10"],
            "ratio_to_always": rows[best]["NDCG@10"] / max(rows[ref["always"]]["NDCG@10"], 1e-12),
        }
        check["reaches_ratio"] = check["ratio_to_always"] >= config.goal_ratio
        for name in ("random", "never"):
            other = by_family.get(("random", rate)) if name == "random" else ref.get("never")
            if other is None:
                continue
            diff = paired_difference(user_ndcg[best], user_ndcg[other], indices, config.confidence)
            check[f"{name}_NDCG@10"] = rows[other]["NDCG@10"]
            check[f"{name}_NDCG@10_hi"] = rows[other]["NDCG@10_hi"]
            check[f"diff_vs_{name}"] = list(diff)
            check[f"beats_{name}"] = diff[1] > 0.0  # the paired interval excludes 0
            check[f"above_{name}_interval"] = check["best_NDCG@10"] > rows[other]["NDCG@10_hi"]
        out.append(check)
    return out


# ---------------------------------------------------------------- the experiment


@dataclass
class ExperimentResult:
    """The sweep's rows (one per point), the goal check and the raw per-step results."""

    rows: list[dict[str, Any]]
    goal: list[dict[str, Any]]
    results: list[ReplayResult] = field(repr=False)
    notes: dict[str, Any] = field(default_factory=dict)


def run_request_rate(
    test: ReplayData,
    valid: ReplayData,
    config: RequestRateConfig | None = None,
    progress: bool = False,
) -> ExperimentResult:
    """Calibrate every policy on `valid`, replay every point on `test`, summarise.

    Args:
        test: replay data of the test stream.
        valid: replay data of the validation stream (calibration and the learned policy).
        config: the sweep.
        progress: show a progress bar over the points.
    """
    from shared.progress import progress_bar

    config = RequestRateConfig() if config is None else config
    points, notes = build_points(valid, test.window, config, progress)
    points += reference_points(config)
    indices = bootstrap_indices(test.num_users, config.bootstrap_draws, config.seed)
    rows, results = [], []
    for point in progress_bar(points, desc="replaying policies", enabled=progress):
        result = run_point(test, point)
        results.append(result)
        rows.append(point_row(point, result, indices, config.confidence))
    goal = goal_check(rows, results, points, indices, config)
    notes["reference_gaps"] = reference_gaps(results, points, indices, config.confidence)
    return ExperimentResult(rows, goal, results, notes)


def reference_gaps(
    results: list[ReplayResult], points: list[PolicyPoint], indices: np.ndarray, confidence: float
) -> dict[str, list[float]]:
    """Paired NDCG@10 differences between references: what fresh lists and the SRM add.

    Returns:
        `{"always-never": [mean, low, high], "always-llm_only": …, "always-srm_only": …}` for
        the references present.
    """
    user_ndcg = {p.family: r.user_metrics()["NDCG@10"] for p, r in zip(points, results)}
    pairs = (("always", "never"), ("always", "llm_only"), ("always", "srm_only"))
    return {
        f"{a}-{b}": list(paired_difference(user_ndcg[a], user_ndcg[b], indices, confidence))
        for a, b in pairs
        if a in user_ndcg and b in user_ndcg
    }


# ---------------------------------------------------------------- outputs


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (intervals shown for NDCG@10 and HR@10)."""
    head = "| policy | knob | target | valid rate | rate | NDCG@5 | NDCG@10 [95% CI] | NDCG@20 "
    head += "| HR@5 | HR@10 [95% CI] | HR@20 |"
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        cells = [
            r["label"],
            _fmt(r["knob"], 3),
            _fmt(r["target_rate"], 2),
            _fmt(r["valid_rate"], 3),
            _fmt(r["request_rate"], 3),
            _fmt(r["NDCG@5"]),
            f"{r['NDCG@10']:.4f} [{r['NDCG@10_lo']:.4f}, {r['NDCG@10_hi']:.4f}]",
            _fmt(r["NDCG@20"]),
            _fmt(r["HR@5"]),
            f"{r['HR@10']:.4f} [{r['HR@10_lo']:.4f}, {r['HR@10_hi']:.4f}]",
            _fmt(r["HR@20"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_markdown(goal: list[dict[str, Any]], ratio: float) -> str:
    """The goal check as a short markdown table."""
    lines = [
        f"| target rate | best calibrated (picked on validation) | rate | NDCG@10 | vs always "
        f"(goal ≥ {ratio:.0%}) | random NDCG@10 | best − random [95% CI] | best − never [95% CI] |",
        "|" + " --- |" * 8,
    ]
    for g in goal:
        rand = g.get("diff_vs_random", [np.nan] * 3)
        never = g.get("diff_vs_never", [np.nan] * 3)
        lines.append(
            f"| {g['target_rate']:.2f} | {g['best']} | {g['best_request_rate']:.3f} | "
            f"{g['best_NDCG@10']:.4f} | {g['ratio_to_always']:.1%} "
            f"{'yes' if g['reaches_ratio'] else 'no'} | {g.get('random_NDCG@10', np.nan):.4f} | "
            f"{rand[0]:+.4f} [{rand[1]:+.4f}, {rand[2]:+.4f}] | "
            f"{never[0]:+.4f} [{never[1]:+.4f}, {never[2]:+.4f}] |"
        )
    return "\n".join(lines)


def gaps_markdown(gaps: dict[str, list[float]]) -> str:
    """The reference gaps as lines `always − never: +0.0123 [+0.0100, +0.0150]`."""
    lines = [
        f"- NDCG@10 {name.replace('-', ' − ')}: {m:+.4f} [{lo:+.4f}, {hi:+.4f}] (paired, users)"
        for name, (m, lo, hi) in gaps.items()
    ]
    return "\n".join(lines) + "\n"


def write_outputs(
    experiment: ExperimentResult,
    out: str | Path,
    config: RequestRateConfig,
    meta: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write `request_rate.{csv,json,md,png}` and `records.npz` into `out`; returns the paths."""
    from simulations.plots import plot_request_rate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"request_rate.{kind}" for kind in ("csv", "json", "md", "png")}
    paths["records"] = out / "records.npz"
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(experiment.rows[0]))
        writer.writeheader()
        writer.writerows(experiment.rows)
    payload = {
        "config": asdict(config),
        "meta": meta or {},
        "points": experiment.rows,
        "goal": experiment.goal,
        "notes": experiment.notes,
    }
    paths["json"].write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    title = f"# Request rate vs accuracy ({(meta or {}).get('dataset', '')})\n\n"
    text = title + markdown_table(experiment.rows) + "\n\n## Goal check\n\n"
    text += goal_markdown(experiment.goal, config.goal_ratio) + "\n\n"
    paths["md"].write_text(text + gaps_markdown(experiment.notes.get("reference_gaps", {})))
    plot_request_rate(experiment.rows, paths["png"], title=(meta or {}).get("dataset", ""))
    _write_records(experiment.results, paths["records"])
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_records(results: list[ReplayResult], path: Path) -> None:
    """Per-step records of every point: labels, users, `[P, U, T]` requested and ranks."""
    np.savez_compressed(
        path,
        labels=np.asarray([r.label for r in results]),
        users=results[0].users,
        requested=np.stack([r.requested for r in results]),
        ranks=np.stack([r.ranks for r in results]),
    )
