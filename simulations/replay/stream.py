"""The replayable online stream: per user, the clicks, where the stream starts, `T` steps;
built from a split (the test stream, or a validation stream inside what the device knows)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from shared.candidates import CandidateList
from shared.splits import StreamSplit

CACHE_FORMAT = 1  # bump when the npz layout changes; old files are then recomputed
KS = (5, 10, 20)  # metric cut-offs of the protocol
ROLES = ("test", "valid")
TABLE_BACKENDS = ("local", "ray")


class ListGenerator(Protocol):
    """What the replay needs from the cloud generator (`cloud.generator.CandidateGenerator`)."""

    model_version: str

    def generate(
        self,
        histories: Sequence[Sequence[int]],
        n: int = 50,
        batch_size: int = 32,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> list[CandidateList]: ...


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ReplayConfig:
    """How fresh lists are made and cached."""

    n: int = 50  # candidates per list (docs/design.md §1 default)
    request_history: int = 50  # L: most recent clicks sent with a request (docs/design.md §3)
    batch_size: int = 32  # requests the generator decodes together (bounds its memory)
    chunk_size: int = 256  # requests per generate call, i.e. per progress-bar update
    table_workers: int = 1  # processes (or Ray tasks) making the lists and SRM tables; 1 = this one
    table_backend: str = "local"  # "local" (processes on this machine) or "ray" (a cluster)

    def __post_init__(self) -> None:
        for name in ("n", "request_history", "batch_size", "chunk_size", "table_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.table_backend not in TABLE_BACKENDS:
            raise ValueError(
                f"table_backend must be one of {TABLE_BACKENDS}, got {self.table_backend!r}"
            )


# ---------------------------------------------------------------- the stream


@dataclass(frozen=True, eq=False)  # array fields: compare the arrays, not the objects
class ReplayStream:
    """A replayable online stream: per user, the clicks, where the stream starts, `T` steps.

    Attributes:
        role: "test" (the online stream) or "valid" (the validation stream, for calibration).
        users: `[U]` data-set user index of each row (the policies' spawn key).
        sequences: per row, the user's clicks in order, at least `starts[row] + window` long.
        starts: `[U]` clicks the device already has when the stream starts.
        window: `T`, steps per user.
    """

    role: str
    users: np.ndarray
    sequences: tuple[np.ndarray, ...]
    starts: np.ndarray
    window: int

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not len(self.users) == len(self.sequences) == len(self.starts):
            raise ValueError("users, sequences and starts must have one entry per row")
        if len(self.users) == 0:
            raise ValueError(f"the {self.role} stream has no users")
        for row, (seq, start) in enumerate(zip(self.sequences, self.starts)):
            if start < 1 or len(seq) < start + self.window:
                raise ValueError(
                    f"row {row}: needs >= 1 click before the stream and {self.window} in it, "
                    f"got start={start}, length={len(seq)}"
                )

    @property
    def num_users(self) -> int:
        return len(self.users)

    def history(self, row: int, step: int) -> np.ndarray:
        """`[H]` the clicks before stream step `step` of row `row` (a view, oldest first)."""
        return self.sequences[row][: int(self.starts[row]) + step]

    @cached_property
    def targets(self) -> np.ndarray:
        """`[U, T]` the click at each step (the metric's target)."""
        return np.stack(
            [seq[start : start + self.window] for seq, start in zip(self.sequences, self.starts)]
        )

    @cached_property
    def digest(self) -> str:
        """Hash of everything the stream's replay reads (users, clicks up to its end, T)."""
        h = hashlib.sha256(f"{self.role}:{self.window}".encode())
        h.update(np.asarray(self.users, np.int64).tobytes())
        h.update(np.asarray(self.starts, np.int64).tobytes())
        for seq, start in zip(self.sequences, self.starts):
            part = np.asarray(seq[: start + self.window], np.int64)
            h.update(np.int64(len(part)).tobytes() + part.tobytes())
        return h.hexdigest()[:16]


def stream_from_split(
    split: StreamSplit, role: str = "test", window: int | None = None, min_history: int = 5
) -> ReplayStream:
    """The test stream of a split, or a validation stream built from its known part.

    test:  history `s_1 … s_{n−T}`, steps `s_{n−T+1} … s_n` (docs/design.md §3).
    valid: the same shape shifted back by the test window, inside what the device knows
        before the test stream: history `s_1 … s_{n−T−W}`, steps `s_{n−T−W+1} … s_{n−T}`
        (`W = window`, default `T`). The last step is the validation target; the others
        are the end of the training part, so both models have trained on them — scores on
        this stream run a little optimistic, but it never touches the test stream.
        Users whose history would be shorter than `min_history` are left out.

    Raises:
        ValueError: unknown role, a bad window, or no user qualifies.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    window = split.test_window if window is None else window
    if window < 1 or min_history < 1:
        raise ValueError(f"window and min_history must be >= 1, got {window}, {min_history}")
    users, sequences, starts = [], [], []
    for user in split.stream_users:
        known = split.history_at_stream_start(int(user))
        if role == "test":
            seq, start = np.concatenate([known, split.stream[user]]), len(known)
            if window > split.test_window:
                raise ValueError(f"the test stream has {split.test_window} steps, not {window}")
        else:
            seq, start = known, len(known) - window
        if start >= min_history:
            users.append(int(user))
            sequences.append(np.asarray(seq[: start + window], dtype=np.int64))
            starts.append(start)
    if not users:
        raise ValueError(f"no user has {min_history}+ clicks before a {role} stream of {window}")
    return ReplayStream(
        role, np.asarray(users, np.int64), tuple(sequences), np.asarray(starts, np.int64), window
    )
