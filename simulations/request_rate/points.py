"""The sweep's points: one calibrated policy per family and target rate, plus the references."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from device.fusion import (
    AGE_BUCKETS,
    AgeAlphaFusion,
    Fusion,
    LearnedFusion,
    LLMOnlyFusion,
    RankSigmoidFusion,
    age_bucket_labels,
    build_fusion,
)
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
from device.policies.control import quantile_level, score_quantiles
from shared.metrics import ndcg
from shared.progress import progress_write
from simulations.replay import (
    ReplayData,
)
from simulations.request_rate.calibration import (
    calibrate_controlled,
    calibrate_on_stream,
    choose_gain,
    fit_learned,
    periodic_knobs,
    simulate_controlled,
    simulate_rule,
)
from simulations.request_rate.config import (
    AUTO_FUSION,
    CONTROL_SUFFIX,
    DEFAULT_ALPHAS,
    LEARNED_LABELS,
    RequestRateConfig,
)
from simulations.request_rate.fusion_fit import fit_learned_fusion
from simulations.request_rate.states import feature_rows, measure_table, reachable

# ---------------------------------------------------------------- the points


@dataclass
class PolicyPoint:
    """One point of a curve: the policy, how it was set, and what it did on validation."""

    family: str  # "random", "periodic", "consistency[kendall]", "surprise[drift]", "learned", …
    policy: RequestPolicy | None  # None for srm_only (no device session at all)
    fusion: Fusion | None = None
    target_rate: float | None = None  # the calibration target (None for references)
    valid_rate: float | None = None  # replayed rate on the validation stream
    valid_ndcg10: float | None = None  # NDCG@10 on the validation stream (selects the best)
    valid_table: np.ndarray | None = field(default=None, repr=False)  # [U, T, T] scores


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
        points.append(PolicyPoint(family, calibrated, fusion, rate, achieved, ndcg10, table))
    return points


def controlled_point(
    point: PolicyPoint, valid: ReplayData, config: RequestRateConfig
) -> PolicyPoint:
    """`point`'s policy under the per-device rate controller, calibrated on `valid` with the
    controller in the loop (`device.policies.control`)."""
    quantiles = score_quantiles(point.valid_table[:, reachable(valid.window)])
    levels = quantile_level(point.valid_table, quantiles)  # [U, T, T]
    gain = config.control_gain
    if gain is None:
        gain, _ = choose_gain(levels, point.target_rate)
    level, achieved = calibrate_controlled(levels, point.target_rate, gain)
    policy = RateControlledPolicy(
        inner=point.policy,
        target_rate=point.target_rate,
        quantiles=quantiles,
        level=level,
        gain=gain,
        seed=config.seed,
    )
    _, used = simulate_controlled(levels, level, gain, point.target_rate)
    ranks = valid.fused_ranks(point.fusion)
    steps = np.arange(valid.window)[None, :]
    ndcg10 = float(ndcg(ranks[np.arange(valid.num_users)[:, None], steps, used], 10).mean())
    family = f"{point.family}{CONTROL_SUFFIX}"
    return PolicyPoint(family, policy, point.fusion, point.target_rate, achieved, ndcg10)


def always_ndcg10(valid: ReplayData, fusion: Fusion) -> float:
    """NDCG@10 on the validation stream when the device requests at every step."""
    ranks = valid.fused_ranks(fusion)  # [U, T, T]: list held j at step t
    steps = np.arange(valid.window)
    return float(ndcg(ranks[:, steps, steps], 10).mean())


def choose_fusion(valid: ReplayData, config: RequestRateConfig) -> tuple[Fusion, dict[str, Any]]:
    """The device's fusion, chosen on the validation stream.

    - `lsc4rec` with `config.alphas`: the α whose always-request NDCG@10 is best (ties: the
      one nearest 0.5) — LSC4Rec's fusion, tuned for fresh lists;
    - `age_lsc4rec`: one α per list-age bucket, each the best on the validation states whose
      held list has that age (every step t with every list j <= t made before it, age t − j;
      ties: nearest 0.5). Buckets are independent, so each choice is exact on its states;
    - `learned`: `LearnedFusion` fitted on those states (`fusion_fit`);
    - `auto`: the best of one α for every age, `age_lsc4rec` and `learned`, by NDCG@10 over
      all those states.
    """
    if config.fusion == AUTO_FUSION:
        return choose_best_fusion(valid, config.alphas or DEFAULT_ALPHAS)
    if config.fusion == LearnedFusion.name:
        return fit_learned_fusion(valid)
    if not config.alphas:
        return build_fusion(config.fusion), {}
    if config.fusion == AgeAlphaFusion.name:
        return choose_age_alphas(valid, config.alphas)
    scores = {a: always_ndcg10(valid, RankSigmoidFusion(alpha=a)) for a in config.alphas}
    best = max(scores, key=lambda a: (scores[a], -abs(a - 0.5)))
    return RankSigmoidFusion(alpha=best), {"alpha": best, "valid_ndcg10_by_alpha": scores}


def all_states_ndcg10(data: ReplayData, fusion: Fusion) -> float:
    """NDCG@10 over every (step t, list j <= t) state: every age a held list can reach."""
    steps, held = data.held_states()
    return float(ndcg(data.fused_ranks(fusion)[:, steps, held], 10).mean())


def choose_best_fusion(
    valid: ReplayData, alphas: tuple[float, ...]
) -> tuple[Fusion, dict[str, Any]]:
    """The best of three fusions by validation NDCG@10 over all states (`all_states_ndcg10`):
    one α for every age (chosen on those states), one α per age bucket, the learned fusion."""
    valid.rank_fusions([RankSigmoidFusion(alpha=a) for a in alphas])  # two threads
    by_alpha = {a: all_states_ndcg10(valid, RankSigmoidFusion(alpha=a)) for a in alphas}
    alpha = max(by_alpha, key=lambda a: (by_alpha[a], -abs(a - 0.5)))
    age, age_notes = choose_age_alphas(valid, alphas)
    learned, learned_notes = fit_learned_fusion(valid)
    candidates = {"lsc4rec": RankSigmoidFusion(alpha=alpha), "age_lsc4rec": age, "learned": learned}
    scores = {name: all_states_ndcg10(valid, f) for name, f in candidates.items()}
    chosen = max(scores, key=scores.get)
    valid.forget_ranks(keep=[candidates[chosen]])  # each tried fusion's ranks: [U, T, T] float64
    notes = {
        "chosen": chosen,
        "valid_ndcg10_all_states": scores,
        "lsc4rec": {"alpha": alpha, "valid_ndcg10_by_alpha": by_alpha},
        "age_lsc4rec": age_notes,
        "learned": learned_notes,
    }
    return candidates[chosen], notes


def choose_age_alphas(
    valid: ReplayData, alphas: tuple[float, ...], ages: tuple[int, ...] = AGE_BUCKETS
) -> tuple[AgeAlphaFusion, dict[str, Any]]:
    """`AgeAlphaFusion` with each bucket's α chosen on the validation states of that age
    (buckets that start past the stream's longest age are dropped: the last one kept covers
    every older list)."""
    ages = tuple(a for a in ages if a < valid.window)
    steps, held = valid.held_states()
    age = steps - held
    bucket = np.searchsorted(ages, age, side="right") - 1  # [P]
    by_alpha = {}
    for a in alphas:
        ndcg10 = ndcg(valid.fused_ranks(RankSigmoidFusion(alpha=a))[:, steps, held], 10)  # [U, P]
        by_alpha[a] = [float(ndcg10[:, bucket == b].mean()) for b in range(len(ages))]
    chosen = tuple(
        max(alphas, key=lambda a, b=b: (by_alpha[a][b], -abs(a - 0.5))) for b in range(len(ages))
    )
    notes = {
        "alphas": list(chosen),
        "ages": list(ages),
        "age_buckets": age_bucket_labels(ages),
        "valid_ndcg10_by_alpha_and_bucket": by_alpha,
    }
    return AgeAlphaFusion(alphas=chosen, ages=ages), notes


def build_points(
    valid: ReplayData,
    window: int,
    config: RequestRateConfig,
    progress: bool = False,
    fusion: Fusion | None = None,
) -> tuple[list[PolicyPoint], dict[str, Any]]:
    """Every policy point of the sweep (calibrated on `valid`) and calibration notes.

    Args:
        valid: the validation stream's replay data.
        window: `T` of the test stream (sets the periodic knobs).
        config: the sweep.
        progress: print what is being calibrated.
        fusion: the device's fusion (default: `config.fusion` as named).
    """
    fusion = build_fusion(config.fusion) if fusion is None else fusion
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
            policy = ConsistencyPolicy(measure=measure, seed=seed)
            family = f"{policy.measure.kind}[{measure}]"  # consistency[…] or surprise[…]
            _say(progress, f"calibrating {family} on the validation stream")
            table = measure_table(valid, measure)
            points += _calibrated_points(family, policy, table, valid, fusion, config)
    if "learned" in config.families:
        features = config.features()
        rows = feature_rows(valid, features)  # shared by the labels
        for label in LEARNED_LABELS:
            family = "learned" if label == "rank" else f"learned[{label}]"
            _say(progress, f"training {family} on the validation stream")
            model, table, stats = fit_learned(valid, fusion, features, label, rows)
            policy = LearnedPolicy(model=model, feature_config=features, seed=seed)
            stats["features"] = list(features.names)
            stats["weights"] = model.to_dict()["weights"]
            notes[family] = stats
            points += _calibrated_points(family, policy, table, valid, fusion, config)
    return points, notes


def reference_points(config: RequestRateConfig, fusion: Fusion | None = None) -> list[PolicyPoint]:
    """never (fused) and never in the LLM's order (the held list untouched), always (fused),
    LLM-only at always, SRM-only without cloud; with a chosen α, also always with LSC4Rec's
    α = 0.5."""
    fusion = build_fusion(config.fusion) if fusion is None else fusion
    points = [
        PolicyPoint("never", NeverPolicy(seed=config.seed), fusion),
        PolicyPoint("never_llm_order", NeverPolicy(seed=config.seed), LLMOnlyFusion()),
        PolicyPoint("always", AlwaysPolicy(seed=config.seed), fusion),
        PolicyPoint("llm_only", AlwaysPolicy(seed=config.seed), LLMOnlyFusion()),
        PolicyPoint("srm_only", None),
    ]
    lsc4rec = RankSigmoidFusion(alpha=0.5)
    if config.alphas and fusion != lsc4rec:
        points.append(PolicyPoint("always_alpha_0.5", AlwaysPolicy(seed=config.seed), lsc4rec))
    return points


def _say(progress: bool, message: str) -> None:

    progress_write(message, enabled=progress)
