"""The SRM's policy-independent outputs on a stream: logits of every held list at every step
(by stepping the runner the device uses), each click's surprise, and the SRM's own
full-catalogue ranks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.session import SRMRunner
from seqrec.runners import HistoryRunner, TorchStatefulRunner, make_runner
from shared.cache import digest, load_npz, save_npz
from shared.device_format import SURPRISE_COLUMNS
from shared.metrics import full_ranking_ranks
from shared.progress import progress_bar
from simulations.replay.keys import srm_fingerprint
from simulations.replay.lists import FreshLists
from simulations.replay.parallel import run_tasks
from simulations.replay.stream import ReplayStream

TABLE_FORMAT = 3  # bump when the SRM tables change; 2 added the surprise, 3 the held layout
CHUNK_USERS = 1024  # users a batched runner steps together

# ---------------------------------------------------------------- SRM outputs


@dataclass(frozen=True, eq=False)  # array fields: compare the arrays, not the objects
class SRMTables:
    """The SRM's policy-independent outputs on a stream.

    Attributes:
        logits: `[U, P, N]` float32 over the `P = T(T+1)/2` held pairs (`held_pairs`):
            `[u, pair(t, j)]` = the runner's `score_items` of list `j` at step `t` (after the
            clicks before `t`), for `j <= t` (a list made later is never held, so not kept).
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


def held_pairs(window: int) -> np.ndarray:
    """`[T, T]` the index of pair (step t, list j) in the held layout, row-major over
    `j <= t` (pair(t, j) = t(t+1)/2 + j, so a step's lists are contiguous); -1 for j > t."""
    steps, held = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    return np.where(held <= steps, steps * (steps + 1) // 2 + held, -1)


def pair_count(window: int) -> int:
    """P = T(T+1)/2, the (step, held list) pairs of a T-step stream."""
    return window * (window + 1) // 2


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
    """`[P, N]` logits, `[T]` full ranks and `[T, 5]` surprise of one user, stepping the
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
    logits = np.zeros((pair_count(window), lists.shape[-1]), dtype=np.float32)
    surprise = np.zeros((window, len(SURPRISE_COLUMNS)))
    full = np.full(window, np.nan)
    all_items = np.arange(num_items + 1) if num_items else None
    for t in range(window):
        history = seq[: start + t]
        surprise[t] = last
        for j in range(t + 1):
            logits[pair_count(t) + j] = runner.score_items(state, history, lists[j])
        if all_items is not None:
            scores = runner.score_items(state, history, all_items)[None]  # [1, I]
            full[t] = full_ranking_ranks(scores, seq[start + t : start + t + 1], [history])[0]
        state, last = runner.step_with_surprise(state, history, int(seq[start + t]))
    if resume is not None:
        resume[user] = (start + window, state, last)
    return logits, full, surprise


def _empty_tables(users: int, window: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[B, P, N]` zero logits, `[B, T]` NaN full ranks and `[B, T, 5]` zero surprise."""
    logits = np.zeros((users, pair_count(window), width), dtype=np.float32)
    full = np.full((users, window), np.nan)
    surprise = np.zeros((users, window, len(SURPRISE_COLUMNS)))
    return logits, full, surprise


def compute_srm_tables(
    runner: SRMRunner,
    stream: ReplayStream,
    lists: FreshLists,
    num_items: int = 0,
    resume: ResumeStates | None = None,
    progress: bool = False,
    chunk_users: int = CHUNK_USERS,
) -> SRMTables:
    """Step `runner` through every user's clicks exactly as a device does, scoring every list.

    The torch runners work on `chunk_users` users at once (the same numbers as each user
    alone, without the per-call overhead): a model that carries a state
    (`TorchStatefulRunner`) takes one batched step per click offset, a model that re-reads its
    window (`HistoryRunner`) scores the whole catalogue once per step for every user; any other
    runner (the onnxruntime one) goes user by user.

    Args:
        runner: the SRM behind its device adapter (`make_runner(model)`).
        stream: the stream.
        lists: its fresh lists.
        num_items: catalogue size; > 0 also ranks all items at every step (SRM without cloud).
        resume: user -> (clicks folded, state) to continue from, updated with each user's
            state after the stream (a validation stream ends where the test stream starts).
        progress: show a progress bar.
        chunk_users: users stepped together by a batched runner (bounds its memory).
    """

    logits, full, surprise = _empty_tables(stream.num_users, stream.window, lists.items.shape[-1])
    batched = {TorchStatefulRunner: _chunk_tables, HistoryRunner: _chunk_tables_history}
    if type(runner) in batched:
        if chunk_users < 1:
            raise ValueError(f"chunk_users must be >= 1, got {chunk_users}")
        starts = range(0, stream.num_users, chunk_users)
        chunks = progress_bar(
            starts, desc=f"SRM on {stream.role} stream (chunks)", enabled=progress
        )
        for start in chunks:
            rows = np.arange(start, min(start + chunk_users, stream.num_users))
            logits[rows], full[rows], surprise[rows] = batched[type(runner)](
                runner, stream, rows, lists.items[rows], num_items, resume
            )
        return SRMTables(logits, full, surprise)
    rows = progress_bar(
        range(stream.num_users), desc=f"SRM on {stream.role} stream", enabled=progress
    )
    for row in rows:
        logits[row], full[row], surprise[row] = _user_tables(
            runner, stream, row, lists.items[row], num_items, resume
        )
    return SRMTables(logits, full, surprise)


def _chunk_tables(
    runner: TorchStatefulRunner,
    stream: ReplayStream,
    rows: np.ndarray,
    lists: np.ndarray,
    num_items: int,
    resume: ResumeStates | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_user_tables` for the users at `rows` at once: `[B, P, N]` logits, `[B, T]` full
    ranks and `[B, T, 5]` surprise. Clicks of item 0 leave a state as it is, so users whose
    histories differ in length step together."""
    import torch

    model, window = runner.model, stream.window
    sequences = [stream.sequences[r] for r in rows]
    starts = stream.starts[rows].astype(np.int64)
    users = [int(u) for u in stream.users[rows]]
    kept = [
        resume[u] if resume is not None and u in resume and resume[u][0] <= start else None
        for u, start in zip(users, starts)
    ]
    folded = np.array([0 if k is None else k[0] for k in kept], dtype=np.int64)
    states = [model.init_state(1) if k is None else k[1][0] for k in kept]
    state = type(states[0]).cat(states)
    table = runner.item_table()
    with torch.no_grad():
        # the history up to its last click, which is stepped with its surprise
        for offset in range(int(max(starts - 1 - folded, default=0))):
            index = folded + offset
            items = [
                int(seq[i]) if i < start - 1 else 0
                for seq, i, start in zip(sequences, index, starts)
            ]
            state, _ = model.step(state, torch.tensor(items))
        pending = folded < starts  # users whose last history click is still to be stepped
        items = [
            int(seq[start - 1]) if p else 0 for seq, start, p in zip(sequences, starts, pending)
        ]
        state, _, last = model.step_with_surprise(state, torch.tensor(items), table)
        last = last.double().numpy()
        for b, k in enumerate(kept):
            if not pending[b]:
                last[b] = k[2]  # resumed exactly at the stream: its last surprise is kept
        logits, full, surprise = _empty_tables(len(rows), window, lists.shape[-1])
        candidates = torch.as_tensor(lists.astype(np.int64))  # [B, T, N]
        for t in range(window):
            surprise[:, t] = last
            for j in range(t + 1):
                logits[:, pair_count(t) + j] = model.score_features(
                    state.feature, candidates[:, j]
                ).numpy()
            clicks = np.array([seq[start + t] for seq, start in zip(sequences, starts)])
            if num_items:
                scores = (state.feature @ table.t()).double().numpy()  # [B, I]
                histories = [seq[: start + t] for seq, start in zip(sequences, starts)]
                full[:, t] = full_ranking_ranks(scores, clicks, histories)
            state, _, last = model.step_with_surprise(state, torch.as_tensor(clicks), table)
            last = last.double().numpy()
    if resume is not None:
        for b, user in enumerate(users):
            one = type(state)(*(tensor[b : b + 1] for tensor in state.tensors()))
            resume[user] = (int(starts[b]) + window, (one, one.feature), last[b])
    return logits, full, surprise


def load_or_compute_srm_tables(
    model: Any,
    stream: ReplayStream,
    lists: FreshLists,
    num_items: int = 0,
    cache_dir: str | Path | None = None,
    resume: ResumeStates | None = None,
    progress: bool = False,
    workers: int = 1,
    backend: str = "local",
) -> SRMTables:
    """`compute_srm_tables` for a torch SRM, through the npz cache when `cache_dir` is set;
    with `workers` > 1 (or `backend` "ray") its user chunks run in worker processes
    (`compute_srm_tables_parallel`).

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
    if workers > 1 or backend == "ray":
        tables = compute_srm_tables_parallel(
            model, stream, lists, num_items, resume, workers, backend, progress=progress
        )
    else:
        tables = compute_srm_tables(runner, stream, lists, num_items, resume, progress)
    if path and lists.key:
        arrays = {
            "logits": tables.logits,
            "full_ranks": tables.full_ranks,
            "surprise": tables.surprise,
        }
        save_npz(path, key, arrays)
    return tables


def _chunk_tables_history(
    runner: HistoryRunner,
    stream: ReplayStream,
    rows: np.ndarray,
    lists: np.ndarray,
    num_items: int,
    resume: ResumeStates | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_user_tables` of a window-reading model for the users at `rows` at once: at every
    step one `score_all` of each user's last `max_len` clicks gives the held lists' logits,
    the target's full rank and the surprise of the click that follows."""
    import torch

    from seqrec.models.surprise import catalogue_surprise, feature_drift

    model, window = runner.model, stream.window
    sequences = [stream.sequences[r] for r in rows]
    starts = stream.starts[rows].astype(np.int64)
    width = runner.max_len or max(int(starts.max()) + window, 1)
    table = model.all_item_features().double()  # [I, D], for the drift

    def windows(ends: np.ndarray, length: int) -> torch.Tensor:
        """`[B, length]` the `length` clicks before each `end` (left-padded with 0)."""
        out = np.zeros((len(rows), length), dtype=np.int64)
        for b, (seq, end) in enumerate(zip(sequences, ends)):
            part = seq[max(0, end - length) : end]
            out[b, length - len(part) :] = part
        return torch.as_tensor(out)

    def surprise_of(scores: torch.Tensor, ends: np.ndarray) -> np.ndarray:
        """`[B, 5]` surprise of each user's click at `ends`, `scores` from the clicks before."""
        clicks = torch.as_tensor(np.array([seq[end] for seq, end in zip(sequences, ends)]))
        logits = scores[:, 1:]  # [B, I − 1]: items 1..I−1, as the runner scores them
        logit = logits.gather(1, (clicks - 1).unsqueeze(1)).squeeze(1)
        nll, rank = catalogue_surprise(logits, logit)
        recent = table[windows(ends, runner.drift_window)]  # [B, R, D]; padding rows are 0
        drift = feature_drift(table[clicks], recent)
        return torch.stack([logit, nll, rank, drift, torch.zeros_like(logit)], 1).numpy()

    with torch.no_grad():
        logits, full, surprise = _empty_tables(len(rows), window, lists.shape[-1])
        previous = model.score_all(windows(starts - 1, width)).double()
        last = surprise_of(previous, starts - 1)
        for t in range(window):
            surprise[:, t] = last
            scores = model.score_all(windows(starts + t, width)).double()  # [B, I]
            picked = np.take_along_axis(scores.numpy(), lists[:, : t + 1].reshape(len(rows), -1), 1)
            first = pair_count(t)  # step t's held lists j = 0 … t are contiguous
            logits[:, first : first + t + 1] = picked.reshape(len(rows), t + 1, -1)
            if num_items:
                clicks = np.array([seq[start + t] for seq, start in zip(sequences, starts)])
                histories = [seq[: start + t] for seq, start in zip(sequences, starts)]
                full[:, t] = full_ranking_ranks(scores.numpy(), clicks, histories)
            last = surprise_of(scores, starts + t)
    if resume is not None:
        for b, user in enumerate(stream.users[rows]):
            resume[int(user)] = (int(starts[b]) + window, None, last[b])
    return logits, full, surprise


# ---------------------------------------------------------------- past one process


def compute_srm_tables_parallel(
    model: Any,
    stream: ReplayStream,
    lists: FreshLists,
    num_items: int = 0,
    resume: ResumeStates | None = None,
    workers: int = 2,
    backend: str = "local",
    chunk_users: int = CHUNK_USERS,
    progress: bool = False,
) -> SRMTables:
    """`compute_srm_tables` of a torch SRM with its user chunks spread over `workers` worker
    processes on this machine (`backend` "local") or as Ray tasks, one CPU each, on a cluster
    (`backend` "ray", `ray.init()` joins the one `RAY_ADDRESS` names). Each chunk runs exactly
    as in one process, so the tables are the same; `resume` is read and updated likewise.

    Raises:
        ValueError: an unknown backend, or Ray asked for and not installed.
    """
    starts = range(0, stream.num_users, chunk_users)
    tasks = []
    for start in starts:
        rows = np.arange(start, min(start + chunk_users, stream.num_users))
        part = _stream_rows(stream, rows)
        kept = None
        if resume is not None:
            kept = {int(u): resume[int(u)] for u in part.users if int(u) in resume}
        items = lists.items[start : start + len(rows)]  # a view: pickled per task, not copied here
        tasks.append((model, part, items, num_items, kept, chunk_users))
    logits, full, surprise = _empty_tables(stream.num_users, stream.window, lists.items.shape[-1])
    desc = f"SRM on {stream.role} stream"
    results = run_tasks(_table_task, tasks, workers, backend, desc, progress)
    for start, (part_logits, part_full, part_surprise, kept) in zip(starts, results):
        rows = slice(start, start + len(part_logits))
        logits[rows], full[rows], surprise[rows] = part_logits, part_full, part_surprise
        if resume is not None:
            resume.update(kept)
    return SRMTables(logits, full, surprise)


def _stream_rows(stream: ReplayStream, rows: np.ndarray) -> ReplayStream:
    """The stream of the users at `rows` only."""
    import dataclasses

    return dataclasses.replace(
        stream,
        users=stream.users[rows],
        sequences=tuple(stream.sequences[r] for r in rows),
        starts=stream.starts[rows],
    )


def _table_task(
    model: Any,
    stream: ReplayStream,
    items: np.ndarray,
    num_items: int,
    resume: ResumeStates | None,
    chunk_users: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ResumeStates]:
    """One worker's chunk: the tables of `stream`'s users (one thread, as a device runs)."""
    import torch

    torch.set_num_threads(1)
    lists = FreshLists(items, np.zeros(items.shape, np.float32), "", 0)
    kept = dict(resume) if resume is not None else None
    tables = compute_srm_tables(
        make_runner(model), stream, lists, num_items, kept, chunk_users=chunk_users
    )
    return tables.logits, tables.full_ranks, tables.surprise, kept or {}
