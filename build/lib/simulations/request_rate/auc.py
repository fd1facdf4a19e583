"""How well each request measure predicts when a request pays: AUCs over device states.

For every reachable state (step `t >= 1`, held list `j`) of the test stream, two labels:

    fresh_better   a fresh list would rank the target strictly higher than the held one (in
                   the fused list the device shows), the learned policy's own target
    topic_switch   the last click is the first after a change of the user's latent topic
                   (synthetic data, whose generator knows the topics)

and, per measure (every consistency and surprise measure, the learned policy's probability),
the AUC of its score for the label with a 95% bootstrap interval over users. States at
`t = 0` are left out: a request there fetches the list the device already holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.fusion import Fusion
from device.policies import FeatureConfig, LogisticRegression
from device.policies.surprise import REQUEST_MEASURES
from simulations.replay import ReplayData
from simulations.request_rate.states import feature_rows, measure_table, state_index
from simulations.request_rate.statistics import bootstrap_indices

LABELS = ("fresh_better", "topic_switch")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties given the mean of the ranks they span."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]  # exclusive
    group_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 … ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half); NaN without both classes."""
    labels = np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True)
class StateLabels:
    """The states scored (`state_index` order, `t >= 1`) and their labels."""

    rows: np.ndarray  # [M] stream row of each state
    keep: np.ndarray  # [M_all] bool: which states of `state_index` are scored
    labels: dict[str, np.ndarray]  # label name -> [M] bool


def state_labels(
    data: ReplayData, fusion: Fusion, topics: Sequence[np.ndarray] | None = None
) -> StateLabels:
    """Labels of the scored states; `topics[user]` aligned with the user's clicks (optional)."""
    rows, steps, held = state_index(data)
    keep = steps >= 1
    rows, steps, held = rows[keep], steps[keep], held[keep]
    ranks = data.fused_ranks(fusion)  # [U, T, T]
    labels = {"fresh_better": ranks[rows, steps, steps] < ranks[rows, steps, held]}
    if topics is not None:
        switch = np.empty(len(rows), dtype=bool)
        for i, (row, step) in enumerate(zip(rows, steps)):
            latent = topics[int(data.stream.users[row])]
            last = int(data.stream.starts[row]) + step - 1  # index of the last click
            switch[i] = latent[last] != latent[last - 1]
        labels["topic_switch"] = switch
    return StateLabels(rows, keep, labels)


def measure_scores(
    data: ReplayData,
    keep: np.ndarray,
    learned: dict[str, tuple[LogisticRegression, FeatureConfig]] | None = None,
    measures: Sequence[str] = REQUEST_MEASURES,
) -> dict[str, np.ndarray]:
    """`[M]` scores of every measure (and of each learned policy: name -> its classifier and
    the features it reads) at the scored states."""
    rows, steps, held = (index[keep] for index in state_index(data))
    scores = {name: measure_table(data, name)[rows, steps, held] for name in measures}
    tables: dict[FeatureConfig, np.ndarray] = {}  # learned policies share their features
    for name, (model, features) in (learned or {}).items():
        if features not in tables:
            tables[features] = feature_rows(data, features)[keep]
        scores[name] = model.predict_proba(tables[features])
    return scores


def auc_table(
    data: ReplayData,
    fusion: Fusion,
    learned: dict[str, tuple[LogisticRegression, FeatureConfig]] | None = None,
    topics: Sequence[np.ndarray] | None = None,
    draws: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per measure: for each label, its AUC and a bootstrap interval over users.

    Returns:
        rows `{"measure", "<label>_auc", "<label>_lo", "<label>_hi", "<label>_positives"}`.
    """
    states = state_labels(data, fusion, topics)
    scores = measure_scores(data, states.keep, learned)
    by_user = [np.flatnonzero(states.rows == row) for row in range(data.num_users)]
    samples = [  # the states of each resample's users (the sweep's own resampling)
        np.concatenate([by_user[u] for u in users])
        for users in bootstrap_indices(data.num_users, draws, seed)
    ]
    tail = (1.0 - confidence) / 2.0
    table = []
    for name, values in scores.items():
        row: dict[str, Any] = {"measure": name}
        for label, target in states.labels.items():
            spread = [auc(values[s], target[s]) for s in samples]
            low, high = np.nanquantile(spread, [tail, 1.0 - tail])
            row[f"{label}_auc"] = auc(values, target)
            row[f"{label}_lo"], row[f"{label}_hi"] = float(low), float(high)
            row[f"{label}_positives"] = float(target.mean())
        table.append(row)
    return table


def auc_markdown(table: list[dict[str, Any]]) -> str:
    """The AUC table with plain column names (0.5 = no better than chance)."""
    labels = [label for label in LABELS if f"{label}_auc" in table[0]]
    heads = {
        "fresh_better": "AUC: a fresh list ranks the target better [95% CI]",
        "topic_switch": "AUC: first click after a topic switch [95% CI]",
    }
    lines = [
        "| request measure | " + " | ".join(heads[label] for label in labels) + " |",
        "|" + " --- |" * (1 + len(labels)),
    ]
    for row in table:
        cells = [
            f"{row[f'{label}_auc']:.3f} [{row[f'{label}_lo']:.3f}, {row[f'{label}_hi']:.3f}]"
            for label in labels
        ]
        lines.append(f"| {row['measure'].replace('_', ' ')} | " + " | ".join(cells) + " |")
    shares = ", ".join(
        f"{label.replace('_', ' ')} {table[0][f'{label}_positives']:.1%}" for label in labels
    )
    return "\n".join(lines) + f"\n\nPositive states: {shares}.\n"
