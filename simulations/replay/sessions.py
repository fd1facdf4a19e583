"""The same replay through `DeviceSession` and the stream driver (the reference path a live
fleet is tested against): a fetch that answers from the fresh-list cache, and a runner that
answers from the precomputed logits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from device.driver import run_stream
from device.fusion import Fusion, RankSigmoidFusion
from device.policies import RequestPolicy
from device.session import DeviceSession, SessionConfig, SRMRunner
from shared.candidates import CandidateList
from simulations.replay.engine import ReplayData, ReplayResult, result_label

# ---------------------------------------------------------------- through DeviceSession


class CachedFetch:
    """A device's `fetch(history, exclude=...)` for one stream user, answered from the
    fresh-list cache.

    It looks the sent history up (the last `L` clicks before some step) and returns that
    step's cached list, as the cloud would (the cache was made with the same exclusions).
    `calls` counts requests.

    Raises (on call):
        KeyError: the history is not one the stream ever sends.
    """

    def __init__(self, data: ReplayData, row: int) -> None:
        self.data = data
        self.row = row
        self.calls = 0
        limit = data.lists.request_history
        self._steps = {
            data.stream.history(row, t)[-limit:].tobytes(): t for t in range(data.window)
        }

    def __call__(self, history: np.ndarray, exclude: np.ndarray | None = None) -> CandidateList:
        self.calls += 1
        step = self._steps.get(np.asarray(history, dtype=np.int64).tobytes())
        if step is None:
            raise KeyError(f"no cached list for this history of user row {self.row}")
        return self.data.lists.candidates(self.row, step)


class PrecomputedRunner:
    """An `SRMRunner` that answers `score_items` from `ReplayData`'s precomputed logits.

    The state is the number of clicks folded in; the logits of a list at a stream step are
    the ones the real runner returned there, looked up by the list's item ids.
    """

    def __init__(self, data: ReplayData, row: int) -> None:
        self.data = data
        self.row = row
        self.start = int(data.stream.starts[row])
        self._lists = {}
        for j in range(data.window - 1, -1, -1):  # the earliest step wins on identical lists
            self._lists[data.lists.items[row, j].tobytes()] = j

    def init_state(self) -> int:
        return 0

    def step(self, state: int, item: int) -> int:
        return state + 1

    def step_with_surprise(
        self, state: int, history: np.ndarray, item: int
    ) -> tuple[int, np.ndarray]:
        """The recorded surprise of click number `state` (the history's last click is row 0
        of the table; earlier history clicks and the stream's last one are never read)."""
        row = state - self.start + 1  # the click before stream step `row`
        surprise = self.data.srm.surprise[self.row]  # [T, 5]
        known = 0 <= row < self.data.window
        return state + 1, surprise[row].copy() if known else np.zeros(surprise.shape[-1])

    def score_items(self, state: int, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        step = state - self.start
        held = self._lists.get(np.asarray(items, dtype=np.int64).tobytes())
        if held is None or not 0 <= step < self.data.window or held > step:
            raise KeyError(f"no precomputed logits for these items at step {step}")
        return self.data.logits_at(self.row, step, held)


def _session_row(
    data: ReplayData,
    row: int,
    policy: RequestPolicy,
    fusion: Fusion,
    runner: SRMRunner,
) -> tuple[np.ndarray, np.ndarray]:
    """One user through a `DeviceSession`: `[T]` requested and `[T]` target ranks."""
    width = data.lists.items.shape[-1]
    config = SessionConfig(top_k=width, request_history=data.lists.request_history)
    session = DeviceSession(
        runner,
        policy,
        fusion,
        config,
        history=data.stream.history(row, 0),
        candidates=data.lists.candidates(row, 0),
    )
    record = run_stream(session, CachedFetch(data, row), data.stream.targets[row])
    return record.requested, record.ranks


def replay_sessions(
    data: ReplayData,
    policy: RequestPolicy,
    fusion: Fusion | None = None,
    runner_factory: Callable[[int], SRMRunner] | None = None,
    label: str | None = None,
) -> ReplayResult:
    """Replay the stream through one `DeviceSession` per user (slow; the reference path).

    Args:
        data: the prepared stream.
        policy: the request policy (each user gets `policy.spawn(user)`).
        fusion: the device's fusion; LSC4Rec's α = 0.5 if None.
        runner_factory: row -> SRM runner; default `PrecomputedRunner`. Pass
            `lambda row: make_runner(model)` to run the real SRM as a live device does.
        label: name for tables.
    Returns:
        per-step records; equal to `replay(data, policy, fusion)`.
    """
    fusion = RankSigmoidFusion() if fusion is None else fusion
    requested = np.zeros((data.num_users, data.window), dtype=bool)
    ranks = np.zeros((data.num_users, data.window))
    for row, user in enumerate(data.stream.users):
        runner = PrecomputedRunner(data, row) if runner_factory is None else runner_factory(row)
        requested[row], ranks[row] = _session_row(
            data, row, policy.spawn(int(user)), fusion, runner
        )
    steps = np.arange(data.window)[None, :]
    used = np.maximum.accumulate(np.where(requested, steps, 0), axis=1)  # last request, else 0
    return ReplayResult(
        result_label(policy, fusion, label), data.stream.users, requested, used, ranks
    )
