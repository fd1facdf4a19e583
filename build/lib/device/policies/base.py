"""What a request policy sees at a stream step (`PolicyObservation`) and the interface every
policy implements (`RequestPolicy`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

from device.policies.surprise import empty_rows


@dataclass(frozen=True)
class PolicyObservation:
    """What the device knows at one stream step, before it shows a list.

    Attributes:
        step: 0-based stream step (clicks observed since the session started).
        steps_since_request: age of the cached list in steps (= clicks since it was fetched).
        items: `[N]` cached candidate ids, LLM order (0 = padding).
        llm_scores: `[N]` their LLM log-probabilities.
        srm_logits: `[N]` the SRM's logits for them, from the up-to-date history.
        history: `[H]` the user's clicks so far, oldest first.
        surprise: `[A, S]` rows (`device.policies.surprise.CLICK_COLUMNS`) of the clicks
            since the cached list was fetched, oldest first; the last click's alone when
            none came since. Empty when the device reports no surprise.
    """

    step: int
    steps_since_request: int
    items: np.ndarray
    llm_scores: np.ndarray
    srm_logits: np.ndarray
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    surprise: np.ndarray = field(default_factory=empty_rows)

    def __post_init__(self) -> None:
        if self.step < 0 or self.steps_since_request < 0:
            raise ValueError(
                f"step and steps_since_request must be >= 0, got {self.step}, "
                f"{self.steps_since_request}"
            )
        shapes = {np.shape(self.items), np.shape(self.llm_scores), np.shape(self.srm_logits)}
        if len(shapes) != 1 or len(np.shape(self.items)) != 1:
            raise ValueError(f"items, llm_scores and srm_logits must be equal-length 1-D: {shapes}")

    @cached_property
    def valid(self) -> np.ndarray:
        """`[N]` bool: slots that may be shown (not padding, not already clicked)."""
        items = np.asarray(self.items, dtype=np.int64)
        return (items != 0) & ~np.isin(items, np.asarray(self.history, dtype=np.int64))

    def recent(self, k: int) -> np.ndarray:
        """`[k]` the last `k` clicks, oldest first, left-padded with 0."""
        tail = np.asarray(self.history, dtype=np.int64)[-k:] if k > 0 else np.zeros(0, np.int64)
        return np.concatenate([np.zeros(k - tail.size, dtype=np.int64), tail])


# ---------------------------------------------------------------- the policies


@dataclass(eq=False)
class RequestPolicy:
    """Base of the request policies.

    Subclasses set `name`, implement `decide`, and keep any per-user state in `reset`.
    `seed` and the key given to `spawn` seed the policy's random stream, so users differ
    and a replay of the same users draws the same numbers.
    """

    name: ClassVar[str] = ""
    seed: int = field(default=0, kw_only=True)  # base seed of this policy's random stream

    def __post_init__(self) -> None:
        self._key = 0
        self.reset()

    @property
    def knob(self) -> float | None:
        """The value a request-rate curve sweeps (None when the policy has none)."""
        return None

    @property
    def label(self) -> str:
        """Short description for tables and plots, e.g. `periodic(m=5)`."""
        return self.name if self.knob is None else f"{self.name}({self.knob:g})"

    def reset(self) -> None:
        """Start over: a fresh random stream and no remembered requests."""
        self.rng = np.random.default_rng([self.seed, self._key])

    def spawn(self, key: int) -> RequestPolicy:
        """A reset copy for one user; `key` (e.g. the user id) picks its random stream."""
        clone = copy.deepcopy(self)
        clone._key = int(key)
        clone.reset()
        return clone

    def decide(self, obs: PolicyObservation) -> bool:
        """True to request a fresh list at this step."""
        raise NotImplementedError
