"""The one driver of a device over a user's stream: serve a step, score it, observe the click.

    record = run_stream(session, fetch, targets, k=50)

Both the session replay (`simulations.replay.replay_sessions`, with cached fresh lists) and
the live fleet (`simulations.fleet`, with the gRPC client) run devices through it; the
vectorised replay (`simulations.replay.replay`) is the fast path, pinned to this driver by the
equality tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from device.session import DeviceSession, FetchFn, StepOutcome
from shared.metrics import candidate_list_ranks


@dataclass(frozen=True)
class StreamRecord:
    """Per stream step of one user: `[T]` arrays."""

    requested: np.ndarray  # bool: a fresh list was requested
    failed: np.ndarray  # bool: ... and it did not arrive
    lists_used: np.ndarray  # int64: step the shown list was fetched at (0 = the initial list)
    ranks: np.ndarray  # float: 0-based position of the target in what was shown; inf if absent


def run_stream(
    session: DeviceSession,
    fetch: FetchFn,
    targets: Sequence[int],
    k: int | None = None,
    after_step: Callable[[int, StepOutcome], None] | None = None,
) -> StreamRecord:
    """Run `session` over the clicks `targets`: at each step serve (maybe request, rerank,
    show top-`k`), rank the click in what was shown, then observe the click.

    Args:
        session: the device, already holding its history (and initial list, if any).
        fetch: how it asks the cloud (`DeviceSession.request_fresh`'s contract).
        targets: the clicks of the stream, in order.
        k: items shown per step (default the session's `top_k`).
        after_step: called after each step with (step index, outcome), e.g. to pace a fleet.
    """
    window = len(targets)
    requested, failed = np.zeros(window, bool), np.zeros(window, bool)
    used, ranks = np.zeros(window, np.int64), np.full(window, np.inf)
    for t, target in enumerate(targets):
        outcome = session.serve_step(fetch, k)
        requested[t], failed[t] = outcome.requested, outcome.failed
        used[t] = max(outcome.list_step, 0)  # no list yet: counted as the initial one
        ranks[t] = candidate_list_ranks([outcome.shown], np.array([target]))[0]
        session.observe(int(target))
        if after_step is not None:
            after_step(t, outcome)
    return StreamRecord(requested, failed, used, ranks)
