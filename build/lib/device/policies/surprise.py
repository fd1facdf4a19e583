"""Surprise as request measures: how unexpected the clicks since the cached list arrived were.

The SRM's step reports each click's surprise before taking it in (`seqrec.models.surprise`:
logit, surprisal over the catalogue, rank share over the catalogue, drift in `F_t` space,
TTT inner loss). The device adds two columns relative to the list it held at that click:

    list_rank       share of the held list's valid items the SRM scored above the click
                    (0.5 when no list was held: no evidence either way)
    list_position   the click's position in the held list's LLM order / list length
                    (1 when the click was not in the list, or no list was held)

A request measure reads the rows of the clicks since the held list was fetched
(`PolicyObservation.surprise`, at least the last click): per click (the last row) or
smoothed (the mean of the rows). Higher = more surprise = more reason to request, like the
consistency measures.

Letters used in shape comments:
    M  rows (clicks or device states)    N  list length    S  click columns
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from device.consistency import MEASURES, ConsistencyMeasure, build_measure
from shared.device_format import SURPRISE_COLUMNS

LIST_COLUMNS: tuple[str, ...] = ("list_rank", "list_position")
CLICK_COLUMNS: tuple[str, ...] = (*SURPRISE_COLUMNS, *LIST_COLUMNS)
NO_LIST = {"list_rank": 0.5, "list_position": 1.0}  # a click observed while no list was held

# Measure name -> the click column it reads (plain names for tables and labels).
_COLUMN_OF = {
    "surprisal": "nll",
    "catalogue_rank": "catalogue_rank",
    "list_rank": "list_rank",
    "drift": "drift",
    "inner_loss": "inner_loss",
    "last_click_position": "list_position",
}


def empty_rows() -> np.ndarray:
    """`[0, S]` no click rows (an observation built without surprise)."""
    return np.zeros((0, len(CLICK_COLUMNS)))


def list_columns(
    clicks: Any, click_logits: Any, items: Any, list_logits: Any, valid: Any
) -> np.ndarray:
    """`[M, 2]` list_rank and list_position of each row's click in the list held at it.

    Args:
        clicks: `[M]` clicked ids.
        click_logits: `[M]` the SRM's logit of each click (state before the click).
        items: `[M, N]` the held list's ids, LLM order.
        list_logits: `[M, N]` the SRM's logits of those items (same state).
        valid: `[M, N]` bool slots that could be shown at that click.
    """
    items = np.atleast_2d(np.asarray(items, np.int64))
    logits = np.atleast_2d(np.asarray(list_logits, np.float64))
    valid = np.atleast_2d(np.asarray(valid, bool))
    clicks = np.asarray(clicks, np.int64).reshape(-1)
    click_logits = np.asarray(click_logits, np.float64).reshape(-1)
    n = valid.sum(axis=1)  # [M]
    hit = items == clicks[:, None]  # [M, N]
    # The click itself never counts as above itself: its list logit and its step logit come
    # from two graphs (scorer, step) and may differ in the last bits.
    above = (valid & ~hit & (logits > click_logits[:, None])).sum(axis=1)
    rank = np.where(n > 0, above / np.maximum(n, 1), NO_LIST["list_rank"])
    width = max(items.shape[1], 1)
    position = np.where(hit.any(axis=1), hit.argmax(axis=1) / width, NO_LIST["list_position"])
    return np.stack([rank, position], axis=1)


def click_row(surprise: Any, list_part: Any | None = None) -> np.ndarray:
    """`[S]` one click's row: the model's surprise and the list columns (NO_LIST if None)."""
    part = [NO_LIST[c] for c in LIST_COLUMNS] if list_part is None else list_part
    return np.concatenate([np.asarray(surprise, np.float64).reshape(-1), np.asarray(part, float)])


@dataclass(frozen=True)
class SurpriseMeasure:
    """A click column as a request measure: the last click's value or the mean since the fetch.

    `observe(obs)` reads `obs.surprise`; `from_rows(last, mean)` scores `[M, S]` precomputed
    rows (the replay's tables).
    """

    kind: ClassVar[str] = "surprise"
    name: str = "surprisal"  # a key of SURPRISE_MEASURES

    def __post_init__(self) -> None:
        if self.name not in SURPRISE_MEASURES:
            valid = ", ".join(SURPRISE_MEASURES)
            raise ValueError(f"unknown surprise measure {self.name!r}; valid: {valid}")

    @property
    def column(self) -> int:
        return CLICK_COLUMNS.index(_COLUMN_OF[self.name.removesuffix("_mean")])

    @property
    def smoothed(self) -> bool:
        return self.name.endswith("_mean")

    def from_rows(self, last: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """`[M]` scores from `[M, S]` last-click rows and `[M, S]` means since the fetch."""
        return (mean if self.smoothed else last)[:, self.column]

    def observe(self, obs: Any) -> float:
        last, mean = observation_rows(np.asarray(obs.surprise, np.float64))
        return float(self.from_rows(last[None], mean[None])[0])


SURPRISE_MEASURES: tuple[str, ...] = (*_COLUMN_OF, *(f"{name}_mean" for name in _COLUMN_OF))
REQUEST_MEASURES: tuple[str, ...] = (*MEASURES, *SURPRISE_MEASURES)


def build_request_measure(name: str) -> ConsistencyMeasure | SurpriseMeasure:
    """A consistency measure (`device.consistency.MEASURES`) or a surprise measure by name.

    Raises:
        ValueError: a name in neither (the message lists both).
    """
    if name in SURPRISE_MEASURES:
        return SurpriseMeasure(name)
    if name not in MEASURES:
        valid = ", ".join(REQUEST_MEASURES)
        raise ValueError(f"unknown request measure {name!r}; valid: {valid}")
    return build_measure(name)


def observation_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[S]` last row and `[S]` mean of an observation's `[A, S]` rows (zeros when empty)."""
    if rows.shape[0] == 0:
        zeros = np.zeros(len(CLICK_COLUMNS))
        return zeros, zeros
    return rows[-1], rows.mean(axis=0)
