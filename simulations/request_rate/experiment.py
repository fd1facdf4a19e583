"""The whole request-rate experiment: streams, points, replays, rows, goal check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device.fusion import Fusion
from device.policies import RandomPolicy
from shared.progress import progress_bar, progress_write
from simulations.replay import (
    ReplayData,
    ReplayResult,
)
from simulations.request_rate.ages import never_by_age, policy_by_age
from simulations.request_rate.auc import auc_table
from simulations.request_rate.calibration import fit_learned
from simulations.request_rate.config import CONTROL_SUFFIX, RequestRateConfig
from simulations.request_rate.decisions import ScoreTables
from simulations.request_rate.points import (
    PolicyPoint,
    build_points,
    choose_fusion,
    controlled_point,
    reference_points,
)
from simulations.request_rate.statistics import (
    best_calibrated,
    bootstrap_indices,
    gap_share,
    goal_check,
    paired_difference,
    point_row,
    run_point,
)

# ---------------------------------------------------------------- the experiment


@dataclass
class ExperimentResult:
    """The sweep's rows (one per point), the goal check and the raw per-step results."""

    rows: list[dict[str, Any]]
    goal: list[dict[str, Any]]
    results: list[ReplayResult] = field(repr=False)
    notes: dict[str, Any] = field(default_factory=dict)
    points: list[PolicyPoint] = field(default_factory=list, repr=False)  # aligned with rows

    def chosen(self, rate: float, controlled: bool = True) -> tuple[PolicyPoint, dict[str, Any]]:
        """The policy the experiment chose at target `rate` (best validation NDCG@10 among
        the calibrated ones; under the rate controller when `controlled` and swept so) and
        its row on the test stream.

        Raises:
            ValueError: no calibrated policy was swept at that rate.
        """
        best = best_calibrated(self.points, rate)
        if best is None:
            rates = sorted({p.target_rate for p in self.points if p.target_rate is not None})
            raise ValueError(
                f"no calibrated policy at rate {rate:g}; the sweep's rates: "
                f"{', '.join(f'{r:g}' for r in rates) or 'none'}"
            )
        if controlled:
            family = self.points[best].family + CONTROL_SUFFIX
            for i, point in enumerate(self.points):
                if point.family == family and point.target_rate == rate:
                    return point, self.rows[i]
        return self.points[best], self.rows[best]


def run_request_rate(
    test: ReplayData,
    valid: ReplayData,
    config: RequestRateConfig | None = None,
    progress: bool = False,
    topics: list[np.ndarray] | None = None,
) -> ExperimentResult:
    """Calibrate every policy on `valid`, replay every point on `test`, summarise.

    Args:
        test: replay data of the test stream.
        valid: replay data of the validation stream (calibration and the learned policy).
        config: the sweep.
        progress: show a progress bar over the points.
        topics: per data-set user, the latent topic of each click (synthetic data): adds
            the "first click after a topic switch" column to the AUC table.
    """

    config = RequestRateConfig() if config is None else config
    fusion, fusion_notes = choose_fusion(valid, config)
    points, notes = build_points(valid, test.window, config, progress, fusion)
    points += controlled_points(points, valid, config)
    points += reference_points(config, fusion)
    if fusion_notes:
        notes["fusion"] = fusion_notes
    indices = bootstrap_indices(test.num_users, config.bootstrap_draws, config.seed)
    valid.forget_ranks()  # calibrated: the validation stream's fused ranks are not read again
    rows, results = [], []
    tables = ScoreTables(test)  # each family's test-stream scores, made once for its points
    tables.prepare([p.policy for p in points])
    for point in progress_bar(points, desc="replaying policies", enabled=progress):
        result = run_point(test, point, tables)
        results.append(result)
        rows.append(point_row(point, result, indices, config.confidence))

    def random_at(rate: float) -> tuple[dict[str, Any], ReplayResult]:
        """Random requests at exactly the rate a policy reached on the test stream."""
        point = PolicyPoint("random", RandomPolicy(p=rate, seed=config.seed), fusion, rate)
        result = run_point(test, point, tables)
        return point_row(point, result, indices, config.confidence), result

    goal = goal_check(rows, results, points, indices, config, random_at)
    notes["rate_control"] = rate_control(rows, results, points, indices, config)
    notes["reference_gaps"] = reference_gaps(results, points, indices, config.confidence)
    notes["list_age"] = list_age_notes(test, fusion, points, results, indices, config)
    if config.auc_draws:
        progress_write("scoring every request measure's AUC on the test stream", enabled=progress)
        features = config.features()
        learned = {
            p.family: p.policy.model
            for p in points
            if p.family.startswith("learned") and not p.family.endswith(CONTROL_SUFFIX)
        }
        if not learned:
            learned = {"learned": fit_learned(valid, fusion, features)[0]}
        notes["auc"] = auc_table(
            test,
            fusion,
            {name: (model, features) for name, model in learned.items()},
            topics,
            config.auc_draws,
            config.confidence,
            config.seed,
        )
    return ExperimentResult(rows, goal, results, notes, points)


def controlled_points(
    points: list[PolicyPoint], valid: ReplayData, config: RequestRateConfig
) -> list[PolicyPoint]:
    """The policy chosen at each target rate up to `goal_max_rate`, under the rate controller."""
    if config.control_gain == 0:
        return []
    out = []
    for rate in config.target_rates:
        best = best_calibrated(points, rate)
        if 0 < rate <= config.goal_max_rate and best is not None:
            out.append(controlled_point(points[best], valid, config))
    return out


def rate_control(
    rows: list[dict[str, Any]],
    results: list[ReplayResult],
    points: list[PolicyPoint],
    indices: np.ndarray,
    config: RequestRateConfig,
) -> list[dict[str, Any]]:
    """Per target rate: the chosen policy's achieved test rate and share of the always − never
    gap, without and with the rate controller (and the rate's distance from its target)."""
    where = {(p.family, p.target_rate): i for i, p in enumerate(points)}
    user_ndcg = [r.user_metrics()["NDCG@10"] for r in results]
    ref = {p.family: i for i, p in enumerate(points) if p.family in ("never", "always")}
    out = []
    for rate in config.target_rates:
        best = best_calibrated(points, rate)
        if best is None or (points[best].family + CONTROL_SUFFIX, rate) not in where:
            continue
        entry: dict[str, Any] = {"target_rate": rate, "family": points[best].family}
        pairs = (
            ("plain", best),
            ("controlled", where[(points[best].family + CONTROL_SUFFIX, rate)]),
        )
        for name, i in pairs:
            entry[f"{name}_rate"] = rows[i]["request_rate"]
            entry[f"{name}_rate_error"] = rows[i]["request_rate"] / rate - 1.0
            entry[f"{name}_NDCG@10"] = rows[i]["NDCG@10"]
            if len(ref) == 2:
                entry[f"{name}_gap_share"] = list(gap_share(user_ndcg[i], user_ndcg[ref["never"]],
                    user_ndcg[ref["always"]], indices, config.confidence))  # fmt: skip
        out.append(entry)
    return out


AGE_TABLE_RATE = 0.1  # the per-age table also shows the policy chosen at this rate


def list_age_notes(
    test: ReplayData,
    fusion: Fusion,
    points: list[PolicyPoint],
    results: list[ReplayResult],
    indices: np.ndarray,
    config: RequestRateConfig,
) -> dict[str, Any]:
    """The per-age table (simulations.request_rate.ages) on the test stream: at never, and for
    the policy chosen at `AGE_TABLE_RATE` when the sweep has one."""
    notes: dict[str, Any] = {"never": never_by_age(test, fusion, indices, config.confidence)}
    best = best_calibrated(points, AGE_TABLE_RATE)  # None without a point at that rate
    if best is not None:
        notes["policy"] = f"{points[best].family} at target rate {AGE_TABLE_RATE:g}"
        notes["policy_rate"] = results[best].request_rate
        notes["by_age"] = policy_by_age(test, fusion, results[best])
    return notes


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
    pairs += (("always", "always_alpha_0.5"), ("never", "never_llm_order"))
    return {
        f"{a}-{b}": list(paired_difference(user_ndcg[a], user_ndcg[b], indices, confidence))
        for a, b in pairs
        if a in user_ndcg and b in user_ndcg
    }
