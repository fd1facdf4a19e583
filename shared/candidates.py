"""The candidate list the cloud returns and the device caches (no heavy imports here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CandidateList:
    """Ranked candidates for one request, best first.

    Attributes:
        items: `[N]` int64 item ids (1-based, distinct, valid, none of them in the history).
        scores: `[N]` float32 sequence log-probabilities from the generator (descending).
        model_version: identifies the generator that produced the list.
    """

    items: np.ndarray
    scores: np.ndarray
    model_version: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 1:
            raise ValueError(
                f"items and scores must be 1-D and of equal length, got {self.items.shape} "
                f"and {self.scores.shape}"
            )

    def __len__(self) -> int:
        return int(self.items.shape[0])


def request_parts(history: np.ndarray, request_history: int) -> tuple[np.ndarray, np.ndarray]:
    """What a request for a fresh list sends, from the user's whole `history` (oldest first):
    the last `request_history` clicks, which the cloud model reads, and the distinct items
    clicked before them that are not among them, which the list must leave out (so it holds
    only items the user has not consumed). The device, the replay and the tables all call this.
    """
    history = np.asarray(history, dtype=np.int64)
    recent = history[-request_history:]
    older = history[: max(0, len(history) - request_history)]
    return recent, np.setdiff1d(older, recent)
