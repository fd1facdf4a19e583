"""The main experiment: request rate vs accuracy of the device–cloud system (LSC4Rec's curves).

Curves (one point per target request rate, default 0.05, 0.1, 0.2, 0.3, 0.5, 0.8):

    random(p)             p = the target rate (LSC4Rec's baseline)
    periodic(m)           the m whose rate on a T-step stream, ⌊(T−1)/m⌋ / T, is nearest
    consistency[measure]  rank_diff, kendall, topk, rbo, each calibrated to the rate
    surprise[measure]     the device's surprise at the clicks since the fetch (drift, inner
                          loss, the click's place in the list, …), calibrated to the rate
    learned               logistic regression on device features, calibrated to the rate
    learned[ndcg]         the same, trained to spot a fresh list raising NDCG@10 by > 0.05

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
label "a fresh list would rank the target higher" (`request_gain_labels`), or "… raise its
NDCG@10 by more than 0.05" for `learned[ndcg]`. The goal table picks, per target rate, the
calibrated policy with the best validation NDCG@10 and compares it with random requests at
the rate it actually reached on the test stream. A table of AUCs says how well each measure
predicts a useful request (`simulations.request_rate.auc`).

Each point reports the achieved request rate and HR/NDCG@5/10/20 with a percentile
bootstrap interval over users (users resampled, the same draws for every point, so
differences between points are paired).

The package, one module per concern: `config` (settings, families, the two streams), `states`
(measure and feature tables over reachable states), `calibration`, `points`, `statistics`
(bootstrap intervals, rows, the goal check), `experiment` (the whole run) and `report`.

Letters used in shape comments:
    U  stream users   T  stream steps   N  list length   M  (user, step, list) states
    F  features       B  bootstrap draws
"""

from __future__ import annotations

from simulations.request_rate.calibration import (
    calibrate_on_stream,
    expected_rate,
    fit_learned,
    periodic_knobs,
    simulate_rule,
)
from simulations.request_rate.config import (
    CALIBRATED,
    FAMILIES,
    METRICS,
    REFERENCES,
    RequestRateConfig,
    prepare_streams,
)
from simulations.request_rate.decisions import ScoreTables, batched_decisions, replay_batched
from simulations.request_rate.experiment import ExperimentResult, reference_gaps, run_request_rate
from simulations.request_rate.points import (
    PolicyPoint,
    always_ndcg10,
    build_points,
    choose_fusion,
    reference_points,
)
from simulations.request_rate.report import (
    gaps_markdown,
    goal_markdown,
    markdown_table,
    plain_name,
    write_outputs,
)
from simulations.request_rate.states import (
    feature_rows,
    measure_table,
    reachable,
    state_index,
    to_table,
)
from simulations.request_rate.statistics import (
    bootstrap_indices,
    bootstrap_interval,
    gap_share,
    goal_check,
    paired_difference,
    point_row,
    run_point,
)

__all__ = [
    "gap_share",
    "plain_name",
    "always_ndcg10",
    "choose_fusion",
    "CALIBRATED",
    "ExperimentResult",
    "FAMILIES",
    "METRICS",
    "PolicyPoint",
    "REFERENCES",
    "RequestRateConfig",
    "bootstrap_indices",
    "bootstrap_interval",
    "build_points",
    "calibrate_on_stream",
    "expected_rate",
    "feature_rows",
    "fit_learned",
    "gaps_markdown",
    "goal_check",
    "goal_markdown",
    "markdown_table",
    "measure_table",
    "paired_difference",
    "periodic_knobs",
    "point_row",
    "prepare_streams",
    "reachable",
    "reference_gaps",
    "reference_points",
    "run_point",
    "ScoreTables",
    "batched_decisions",
    "replay_batched",
    "run_request_rate",
    "simulate_rule",
    "state_index",
    "to_table",
    "write_outputs",
]
