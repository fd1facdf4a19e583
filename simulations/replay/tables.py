"""The SRM's policy-independent outputs on a stream: logits of every held list at every step
(by stepping the runner the device uses), each click's surprise, and the SRM's own
full-catalogue ranks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.session import SRMRunner
from seqrec.runners import make_runner
from shared.cache import digest, load_npz, save_npz
from shared.device_format import SURPRISE_COLUMNS
from shared.metrics import full_ranking_ranks
from shared.progress import progress_bar
from simulations.replay.keys import srm_fingerprint
from simulations.replay.lists import FreshLists
from simulations.replay.stream import ReplayStream

TABLE_FORMAT = 2  # bump when the SRM tables change; 2 added the surprise

# ---------------------------------------------------------------- SRM outputs


@dataclass(frozen=True, eq=False)  # array fields: compare the arrays, not the objects
class SRMTables:
    """The SRM's policy-independent outputs on a stream.

    Attributes:
        logits: `[U, T, T, N]` float32; `[u, t, j]` = the runner's `score_items` of list `j`
            at step `t` (after the clicks before `t`), for `j <= t`; 0 for `j > t`.
        full_ranks: `[U, T]` the target's rank among all items, history masked (SRM alone,
            no cloud); NaN when not computed.
        surprise: `[U, T, 5]` the runner's surprise (`SURPRISE_COLUMNS`) of the click just
            before step `t` (step 0: the history's last click), under the state before it.
        from_cache: whether they were read from disk.
    """

    logits: np.ndarray
    full_ranks: np.ndarray
    surprise: np.ndarray
    from_cache: bool = False


# user -> (clicks folded, runner state, surprise of the last folded click)
ResumeStates = dict[int, tuple[int, Any, np.ndarray]]


def _user_tables(
    runner: SRMRunner,
    stream: ReplayStream,
    row: int,
    lists: np.ndarray,
    num_items: int,
    resume: ResumeStates | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[T, T, N]` logits, `[T]` full ranks and `[T, 5]` surprise of one user, stepping the
    runner click by click."""
    seq, start, window = stream.sequences[row], int(stream.starts[row]), stream.window
    user = int(stream.users[row])
    folded, state, last = 0, runner.init_state(), None
    if resume is not None and user in resume and resume[user][0] <= start:
        folded, state, last = resume[user]
    for index in range(folded, start):
        if index < start - 1:  # only the history's last click needs its surprise
            state = runner.step(state, int(seq[index]))
        else:
            state, last = runner.step_with_surprise(state, seq[:index], int(seq[index]))
    logits = np.zeros((window, window, lists.shape[-1]), dtype=np.float32)
    surprise = np.zeros((window, len(SURPRISE_COLUMNS)))
    full = np.full(window, np.nan)
    all_items = np.arange(num_items + 1) if num_items else None
    for t in range(window):
        history = seq[: start + t]
        surprise[t] = last
        for j in range(t + 1):
            logits[t, j] = runner.score_items(state, history, lists[j])
        if all_items is not None:
            scores = runner.score_items(state, history, all_items)[None]  # [1, I]
            full[t] = full_ranking_ranks(scores, seq[start + t : start + t + 1], [history])[0]
        state, last = runner.step_with_surprise(state, history, int(seq[start + t]))
    if resume is not None:
        resume[user] = (start + window, state, last)
    return logits, full, surprise


def compute_srm_tables(
    runner: SRMRunner,
    stream: ReplayStream,
    lists: FreshLists,
    num_items: int = 0,
    resume: ResumeStates | None = None,
    progress: bool = False,
) -> SRMTables:
    """Step `runner` through every user's clicks exactly as a device does, scoring every list.

    Args:
        runner: the SRM behind its device adapter (`make_runner(model)`).
        stream: the stream.
        lists: its fresh lists.
        num_items: catalogue size; > 0 also ranks all items at every step (SRM without cloud).
        resume: user -> (clicks folded, state) to continue from, updated with each user's
            state after the stream (a validation stream ends where the test stream starts).
        progress: show a progress bar.
    """

    shape = (stream.num_users, stream.window, stream.window, lists.items.shape[-1])
    logits = np.zeros(shape, dtype=np.float32)
    full = np.full((stream.num_users, stream.window), np.nan)
    surprise = np.zeros((stream.num_users, stream.window, len(SURPRISE_COLUMNS)))
    rows = progress_bar(
        range(stream.num_users), desc=f"SRM on {stream.role} stream", enabled=progress
    )
    for row in rows:
        logits[row], full[row], surprise[row] = _user_tables(
            runner, stream, row, lists.items[row], num_items, resume
        )
    return SRMTables(logits, full, surprise)


def load_or_compute_srm_tables(
    model: Any,
    stream: ReplayStream,
    lists: FreshLists,
    num_items: int = 0,
    cache_dir: str | Path | None = None,
    resume: ResumeStates | None = None,
    progress: bool = False,
) -> SRMTables:
    """`compute_srm_tables` for a torch SRM, through the npz cache when `cache_dir` is set.

    The key holds the SRM's fingerprint (weights and config), how it runs (stepping a carried
    state or re-reading a window: GRU4Rec did the latter before it stepped), the lists' key and
    whether full ranks were computed.
    """
    runner = make_runner(model)
    key = {
        "format": TABLE_FORMAT,
        "srm": srm_fingerprint(model),
        "runner": type(runner).__name__,
        "lists": lists.key,
        "stream": stream.digest,
        "num_items": num_items,
    }
    path = Path(cache_dir) / f"srm-{stream.role}-{digest(key)}.npz" if cache_dir else None
    cached = load_npz(path, key) if path and lists.key else None
    if cached is not None:
        return SRMTables(cached["logits"], cached["full_ranks"], cached["surprise"], True)
    tables = compute_srm_tables(runner, stream, lists, num_items, resume, progress)
    if path and lists.key:
        arrays = {
            "logits": tables.logits,
            "full_ranks": tables.full_ranks,
            "surprise": tables.surprise,
        }
        save_npz(path, key, arrays)
    return tables
