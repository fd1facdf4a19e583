"""The experiment's config, its reference and policy families, and its two streams
(validation, for calibration; test, for the table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.fusion import FUSIONS
from device.policies import FeatureConfig
from device.policies.learned import DEFAULT_SURPRISE_FEATURES
from device.policies.surprise import REQUEST_MEASURES
from shared.splits import StreamSplit
from simulations.replay import (
    KS,
    ReplayConfig,
    ReplayData,
    prepare_replay,
    stream_from_split,
)

FAMILIES = ("random", "periodic", "consistency", "learned")
LEARNED_LABELS = ("rank", "ndcg")  # one learned curve per label (device.policies.learned)
CALIBRATED = ("consistency", "learned")
CONTROL_SUFFIX = "+control"  # a chosen policy under the per-device rate controller
# never_llm_order: the held list untouched (the LLM's order, clicked items removed), beside
# never (fused), so the device's share between requests is always visible
REFERENCES = ("never", "never_llm_order", "always", "llm_only", "srm_only", "always_alpha_0.5")
AUTO_FUSION = "auto"  # choose among one α, α per age bucket and the learned fusion
ALPHA_FUSIONS = ("lsc4rec", "age_lsc4rec", AUTO_FUSION)  # fusions whose α comes from `alphas`
DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))  # the α grid when `auto` is given none
METRICS = tuple(f"{m}@{k}" for m in ("NDCG", "HR") for k in KS)


@dataclass(frozen=True)
class RequestRateConfig:
    """What the sweep runs and how it reports."""

    target_rates: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)  # LSC4Rec's ratios
    families: tuple[str, ...] = FAMILIES  # policy curves to sweep
    measures: tuple[str, ...] = ("rank_diff", "kendall", "topk", "rbo")  # consistency curves
    fusion: str = "lsc4rec"  # the device's fusion (device.fusion.FUSIONS)
    # lsc4rec fusion: choose α among these on validation (() = 0.5); age_lsc4rec: one α per
    # list-age bucket, each chosen among these
    alphas: tuple[float, ...] = ()
    seed: int = 0  # policies' random streams, calibration ties and bootstrap draws
    bootstrap_draws: int = 1000  # user resamples per interval
    confidence: float = 0.95  # coverage of the intervals
    calibration_steps: int = 30  # bisection steps on the quantile level (2^-30: exact enough)
    goal_max_rate: float = 0.3  # the goal: at rates up to this …
    goal_ratio: float = 0.95  # … reach this share of always-request NDCG@10
    auc_draws: int = 200  # bootstrap draws of the measure-AUC table (0 = no table)
    # surprise measures the learned policy reads (device.policies.learned); the SRM's own
    # surprisal needs a validation stream of clicks new to the SRM (calibration models)
    learned_surprise: tuple[str, ...] = DEFAULT_SURPRISE_FEATURES
    # the per-device rate controller's gain (device.policies.control): the policy chosen at
    # each target rate up to goal_max_rate is also run under it; None chooses the gain on the
    # validation stream (`calibration.choose_gain`), 0 runs no controlled points
    control_gain: float | None = None

    def features(self) -> FeatureConfig:
        """The learned policy's feature settings."""
        return FeatureConfig(surprise=self.learned_surprise)

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_rates", tuple(float(r) for r in self.target_rates))
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "measures", tuple(self.measures))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "learned_surprise", tuple(self.learned_surprise))
        self.features()  # validates the surprise names
        if self.alphas and (
            self.fusion not in ALPHA_FUSIONS or not all(0 <= a <= 1 for a in self.alphas)
        ):
            raise ValueError(f"alphas need a fusion in {ALPHA_FUSIONS} and values in [0, 1]")
        if not self.target_rates or not all(0.0 <= r <= 1.0 for r in self.target_rates):
            raise ValueError(f"target_rates must be in [0, 1], got {self.target_rates}")
        for family in self.families:
            if family not in FAMILIES:
                raise ValueError(f"unknown policy {family!r}; valid names: {', '.join(FAMILIES)}")
        for measure in self.measures:
            if measure not in REQUEST_MEASURES:
                valid = ", ".join(REQUEST_MEASURES)
                raise ValueError(f"unknown measure {measure!r}; valid: {valid}")
        if self.fusion not in FUSIONS and self.fusion != AUTO_FUSION:
            valid = ", ".join([*FUSIONS, AUTO_FUSION])
            raise ValueError(f"unknown fusion {self.fusion!r}; valid: {valid}")
        if self.control_gain is not None and self.control_gain < 0:
            raise ValueError(f"control_gain must be >= 0, got {self.control_gain}")
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
    calibration: tuple[Any, Any] | None = None,
) -> tuple[ReplayData, ReplayData]:
    """Replay data of the validation and the test stream (lists and SRM scores, cached).

    The validation stream is prepared first; its runner states carry over to the test
    stream, which starts where it ends. Only the test stream gets the SRM-only full ranking.

    Args:
        calibration: `(generator, model)` trained with the training part cut one test window
            earlier (`--test-window 2T`), to replay the validation stream with instead of the
            deployed pair. The validation stream's clicks are then new to both, as the test
            stream's are to the deployed pair; with the deployed pair they are training
            clicks, on which both models are far surer than on new ones.
    Returns:
        `(valid, test)`.
    """
    resume: dict = {}
    out = []
    for role, window in (("valid", valid_window), ("test", None)):
        stream = stream_from_split(split, role, window)
        pair = calibration if calibration is not None and role == "valid" else (generator, model)
        out.append(
            prepare_replay(
                stream,
                pair[0],
                pair[1],
                replay_config,
                cache_dir,
                dataset,
                full_ranking=role == "test",
                resume=resume if calibration is None else None,
                progress=progress,
            )
        )
    return out[0], out[1]
