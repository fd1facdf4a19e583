"""Bootstrap intervals over users (paired across points), a point's table row, and the goal
check (best calibrated policy vs random and the references)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from simulations.replay import (
    ReplayData,
    ReplayResult,
    reference_result,
)
from simulations.request_rate.config import (
    CALIBRATED,
    CONTROL_SUFFIX,
    METRICS,
    REFERENCES,
    RequestRateConfig,
)
from simulations.request_rate.decisions import ScoreTables, replay_batched
from simulations.request_rate.points import PolicyPoint

# ---------------------------------------------------------------- bootstrap and rows


def bootstrap_indices(num_users: int, draws: int, seed: int) -> np.ndarray:
    """`[B, U]` user resamples (with replacement), shared by every point so they pair up
    (int32: half the memory of the drawn int64s, the same values)."""
    drawn = np.random.default_rng([seed, 2024]).integers(0, num_users, size=(draws, num_users))
    return drawn.astype(np.int32)


RESAMPLE_CHUNK = 2**22  # resampled values held at once (32 MB of float64)


def resample_means(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`[B]` the mean of `[U]` values over each resample of `[B, U]` indices, a chunk of
    resamples at a time (the whole `[B, U]` gather is 0.8 GB at 10⁵ users and 1,000 draws)."""
    rows = max(1, RESAMPLE_CHUNK // max(indices.shape[1], 1))
    return np.concatenate(
        [values[indices[lo : lo + rows]].mean(axis=1) for lo in range(0, len(indices), rows)]
    )


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
    means = resample_means(values, indices)  # [B]
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


def run_point(
    test: ReplayData, point: PolicyPoint, tables: ScoreTables | None = None
) -> ReplayResult:
    """Replay one point on the test stream, every user at once (srm_only: the SRM's full
    ranking, no requests); `tables`: the test stream's score tables, shared across points."""
    if point.policy is None:
        return reference_result("srm_only", test, test.srm.full_ranks)
    label = point.family if point.family in REFERENCES else None
    return replay_batched(test, point.policy, point.fusion, label=label, tables=tables)


# ---------------------------------------------------------------- goal check


def paired_difference(
    a: np.ndarray, b: np.ndarray, indices: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    """Mean of `a − b` over users and its bootstrap interval (same resamples: paired)."""
    return bootstrap_interval(np.asarray(a) - np.asarray(b), indices, confidence)


def best_calibrated(points: list[PolicyPoint], rate: float) -> int | None:
    """Index of the calibrated policy of target `rate` with the best validation NDCG@10 (the
    experiment's choice at that rate), None if there is none."""
    calibrated = [
        i
        for i, p in enumerate(points)
        if p.target_rate == rate
        and p.family.split("[")[0] in CALIBRATED
        and not p.family.endswith(CONTROL_SUFFIX)
    ]
    return max(calibrated, key=lambda i: points[i].valid_ndcg10) if calibrated else None


def goal_check(
    rows: list[dict[str, Any]],
    results: list[ReplayResult],
    points: list[PolicyPoint],
    indices: np.ndarray,
    config: RequestRateConfig,
    random_at: Callable[[float], tuple[dict[str, Any], ReplayResult]] | None = None,
) -> list[dict[str, Any]]:
    """Per target rate <= `goal_max_rate`: the best calibrated policy (picked on validation
    NDCG@10) against always (ratio), random at the same rate and never (paired intervals).

    `random_at(rate)` replays random requests at the best policy's achieved test rate (its
    row and result); without it, the random point of the same target rate stands in.
    """
    by_family = {(p.family, p.target_rate): i for i, p in enumerate(points)}
    ref = {p.family: i for i, p in enumerate(points) if p.family in REFERENCES}
    user_ndcg = [r.user_metrics()["NDCG@10"] for r in results]
    out = []
    for rate in config.target_rates:
        best = best_calibrated(points, rate)
        if rate > config.goal_max_rate or best is None or "always" not in ref:
            continue
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
            if name == "random" and random_at is not None:
                other_row, other_result = random_at(rows[best]["request_rate"])
                other_ndcg = other_result.user_metrics()["NDCG@10"]
                check["random_request_rate"] = other_row["request_rate"]
            elif other is None:
                continue
            else:
                other_row, other_ndcg = rows[other], user_ndcg[other]
            diff = paired_difference(user_ndcg[best], other_ndcg, indices, config.confidence)
            check[f"{name}_NDCG@10"] = other_row["NDCG@10"]
            check[f"{name}_NDCG@10_hi"] = other_row["NDCG@10_hi"]
            check[f"diff_vs_{name}"] = list(diff)
            check[f"beats_{name}"] = diff[1] > 0.0  # the paired interval excludes 0
            check[f"above_{name}_interval"] = check["best_NDCG@10"] > other_row["NDCG@10_hi"]
        if "never" in ref:
            check["gap_share"] = list(
                gap_share(
                    user_ndcg[best],
                    user_ndcg[ref["never"]],
                    user_ndcg[ref["always"]],
                    indices,
                    config.confidence,
                )
            )
        out.append(check)
    return out


def gap_share(
    policy: np.ndarray,
    never: np.ndarray,
    always: np.ndarray,
    indices: np.ndarray,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """The share of the always − never gap a policy recovers, `(p − never) / (always − never)`
    over users' means, with a percentile bootstrap interval (the same user resamples for the
    numerator and the denominator; resamples whose gap is exactly 0 are left out). NaN when
    there is no gap."""
    policy, never, always = (np.asarray(v, dtype=np.float64) for v in (policy, never, always))
    gain, gap = policy - never, always - never  # [U]
    share = float(gain.mean() / gap.mean()) if gap.mean() != 0.0 else float("nan")
    gaps = resample_means(gap, indices)  # [B]
    usable = gaps != 0.0  # a resample without any gap has no share: left out
    if not usable.any():
        return share, float("nan"), float("nan")
    draws = resample_means(gain, indices)[usable] / gaps[usable]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return share, float(low), float(high)
