"""Every reachable device state (step, held list) of a stream, and the request measures and
learned-policy features at each, as `[U, T, T]` tables."""

from __future__ import annotations

import numpy as np

from device.policies import (
    FeatureConfig,
    request_features,
)
from device.policies.surprise import CLICK_COLUMNS, SurpriseMeasure, build_request_measure
from simulations.replay import (
    ReplayData,
)

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
    window = data.window
    table = np.zeros((data.num_users, window, k), dtype=np.int64)  # [U, T, k]
    offsets = np.arange(window)[:, None] + np.arange(k)[None, :]  # [T, k] into the padded tail
    for row, (seq, start) in enumerate(zip(data.stream.sequences, data.stream.starts)):
        # the clicks before the last step, k zeros in front: step t's last k are at t … t + k − 1
        padded = np.concatenate([np.zeros(k, np.int64), seq[: int(start) + window - 1]])
        table[row] = padded[len(padded) - (window - 1) - k + offsets]
    return table[rows, steps]


def surprise_state_rows(
    data: ReplayData, rows: np.ndarray, steps: np.ndarray, held: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`[M, S]` last-click rows and `[M, S]` means since the fetch at the given states, as
    `ReplayData.surprise_rows` gives them one by one (means by a cumulative sum), a chunk of
    users' click rows at a time."""
    columns = len(CLICK_COLUMNS)
    last, mean = np.empty((len(rows), columns)), np.empty((len(rows), columns))
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    for chunk in data.row_chunks(data.window * data.window):
        lo, hi = np.searchsorted(ordered, [chunk[0], chunk[-1] + 1])
        if lo == hi:
            continue
        pick = order[lo:hi]
        table = data.click_rows_of(chunk)  # [C, T, T, S]
        totals = np.cumsum(table, axis=1)  # [C, T, T, S]: sum over t' <= t
        r, s, h = rows[pick] - chunk[0], steps[pick], held[pick]
        last[pick] = table[r, s, h]
        count = (s - h)[:, None]  # clicks since the fetch
        since = totals[r, s, h] - totals[r, h, h]  # rows held+1 … step
        mean[pick] = np.where(count > 0, since / np.maximum(count, 1), last[pick])
    return last, mean


def measure_table(data: ReplayData, measure: str, chunk: int = 2048) -> np.ndarray:
    """`[U, T, T]` a request measure's score (consistency or surprise) at every reachable
    state (NaN elsewhere)."""
    scorer = build_request_measure(measure)
    rows, steps, held = state_index(data)
    if isinstance(scorer, SurpriseMeasure):
        return to_table(data, scorer.from_rows(*surprise_state_rows(data, rows, steps, held)))
    scores = np.empty(len(rows))
    for lo in range(0, len(rows), chunk):
        r, s, h = rows[lo : lo + chunk], steps[lo : lo + chunk], held[lo : lo + chunk]
        scores[lo : lo + chunk] = scorer(data.logits_at(r, s, h), data.valid_at(r, s, h))
    table = np.full((data.num_users, data.window, data.window), np.nan)
    table[rows, steps, held] = scores
    return table


def feature_rows(data: ReplayData, config: FeatureConfig, chunk: int = 2048) -> np.ndarray:
    """`[M, F]` the learned policy's features at every reachable state (`state_index` order)."""
    rows, steps, held = state_index(data)
    recent = _recent_clicks(data, rows, steps, config.recent_k)
    last, mean = surprise_state_rows(data, rows, steps, held)
    parts = []
    for lo in range(0, len(rows), chunk):
        r, s, h = rows[lo : lo + chunk], steps[lo : lo + chunk], held[lo : lo + chunk]
        items = data.lists.items[r, h]  # [m, N]
        age = s - h  # the held list was fetched at step h
        valid = data.valid_at(r, s, h)
        logits = data.logits_at(r, s, h)
        surprise = (last[lo : lo + chunk], mean[lo : lo + chunk])
        parts.append(
            request_features(items, logits, valid, recent[lo : lo + chunk], age, config, surprise)
        )
    return np.concatenate(parts)


def to_table(data: ReplayData, values: np.ndarray) -> np.ndarray:
    """`[M]` values in `state_index` order as a `[U, T, T]` table (NaN where unreachable)."""
    rows, steps, held = state_index(data)
    table = np.full((data.num_users, data.window, data.window), np.nan)
    table[rows, steps, held] = values
    return table
