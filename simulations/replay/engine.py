"""The fast replay: a policy's decisions over the precomputed stream, all users, with its
results; `target_positions` ranks the target in what was shown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from device.fusion import Fusion, RankSigmoidFusion, rerank_batch
from device.policies import PolicyObservation, RequestPolicy
from device.policies.surprise import CLICK_COLUMNS, LIST_COLUMNS, NO_LIST, list_columns
from shared.metrics import hit_rate, ndcg
from simulations.replay.lists import FreshLists, load_or_generate_lists
from simulations.replay.stream import KS, ListGenerator, ReplayConfig, ReplayStream
from simulations.replay.tables import (
    ResumeStates,
    SRMTables,
    held_pairs,
    load_or_compute_srm_tables,
    pair_count,
)

# ---------------------------------------------------------------- the replay data

ROW_CHUNK = 65536  # (user, state) rows per chunk of a whole-stream table


def first_positions(sequences: Sequence[np.ndarray], items: np.ndarray) -> np.ndarray:
    """Per row, the index of the first click of each of `items[row]` in `sequences[row]`
    (`len(sequences[row])` if never clicked): `[C]` non-empty sequences and `[C, ...]` ids ->
    int64 of the ids' shape."""
    lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
    clicks = np.concatenate([np.asarray(seq, np.int64) for seq in sequences])
    size = int(max(items.max(), clicks.max())) + 1  # (row, item) -> one int64 key
    owner = np.repeat(np.arange(len(sequences)), lengths)
    within = np.arange(len(clicks)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keys, first = np.unique(owner * size + clicks, return_index=True)  # first click per key
    row_shape = (-1,) + (1,) * (items.ndim - 1)
    wanted = np.arange(len(items)).reshape(row_shape) * size + items
    at = np.searchsorted(keys, wanted).clip(max=len(keys) - 1)
    return np.where(keys[at] == wanted, within[first][at], lengths.reshape(row_shape))


def target_positions(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """`[M]` 0-based position of each row's target in `[M, N]` ranked ids; inf if absent."""
    hit = ranked == np.asarray(targets)[:, None]  # [M, N]
    if hit.shape[1] == 0:  # nothing shown (every candidate already clicked)
        return np.full(hit.shape[0], np.inf)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), np.inf)


class ReplayData:
    """Everything a policy replay reads: stream, fresh lists, SRM logits (all policy-free).

    Args:
        stream: the stream.
        lists: its fresh lists (`[U, T, N]`).
        srm: the SRM's logits of those lists (`[U, P, N]`, the held pairs).
    Raises:
        ValueError: the three do not fit together.
    """

    def __init__(self, stream: ReplayStream, lists: FreshLists, srm: SRMTables) -> None:
        users, window = stream.num_users, stream.window
        if lists.items.shape[:2] != (users, window):
            raise ValueError(f"lists are {lists.items.shape[:2]}, the stream is {(users, window)}")
        if srm.logits.shape != (users, pair_count(window), lists.items.shape[2]):
            raise ValueError(f"SRM logits {srm.logits.shape} do not fit lists {lists.items.shape}")
        self.stream = stream
        self.lists = lists
        self.srm = srm
        self._ranks: dict[Fusion, np.ndarray] = {}
        self._pairs = held_pairs(window)

    @property
    def num_users(self) -> int:
        return self.stream.num_users

    @property
    def window(self) -> int:
        return self.stream.window

    def logits_at(self, rows: Any, steps: Any, held: Any) -> np.ndarray:
        """The SRM logits of list `held` at step `steps` (`held <= steps`) for `rows`, indexed
        as `[U, T, T]` (broadcast), as float64: the values a runner's `score_items` returned
        (cast per read, so no float64 copy of the table is kept)."""
        return self.srm.logits[rows, self._pair_index(steps, held)].astype(np.float64)

    def _pair_index(self, steps: Any, held: Any) -> np.ndarray:
        """The held-pair index of (step, list) (`held_pairs`)."""
        pairs = self._pairs[steps, held]
        if np.any(pairs < 0):
            raise IndexError("a list is held only from the step it was made (held <= step)")
        return pairs

    def row_chunks(self, states: int = 1) -> list[np.ndarray]:
        """Rows in chunks of about `ROW_CHUNK` (row, state) pairs: what the whole-stream
        tables are computed in, so their temporaries are bounded by a chunk, not by U."""
        size = max(1, ROW_CHUNK // max(states, 1))
        return [
            np.arange(lo, min(lo + size, self.num_users)) for lo in range(0, self.num_users, size)
        ]

    @cached_property
    def valid(self) -> np.ndarray:
        """`[U, P, N]` bool over the held pairs (`held_pairs`): slot of list `j` may be shown
        at step `t` (not padding, not clicked before `t`); read it with `valid_at`."""
        items = self.lists.items
        steps, held = self.held_states()
        out = np.empty((self.num_users, len(steps), items.shape[-1]), dtype=bool)
        for rows in self.row_chunks(len(steps)):
            pos = first_positions([self.stream.sequences[r] for r in rows], items[rows])
            seen_before = self.stream.starts[rows][:, None, None] + steps[None, :, None]
            out[rows] = (items[rows][:, held] != 0) & (pos[:, held] >= seen_before)
        return out

    def valid_at(self, rows: Any, steps: Any, held: Any) -> np.ndarray:
        """`valid` of list `held` at step `steps` (`held <= steps`) for `rows`, indexed as
        `[U, T, T]` (broadcast)."""
        return self.valid[rows, self._pair_index(steps, held)]

    @cached_property
    def click_rows(self) -> np.ndarray:
        """`click_rows_of` every row, kept (the per-user replay reads it state by state; the
        whole-stream tables read `click_rows_of` a chunk of rows at a time)."""
        return self.click_rows_of(np.arange(self.num_users))

    def click_rows_of(self, rows: np.ndarray) -> np.ndarray:
        """`[C, T, T, S]` for the given rows: the surprise row (`CLICK_COLUMNS`) of the click
        before step `t` as a device holding list `j` saw it (its list columns need the list
        held then, `j <= t − 1`); at step 0 the history's last click, seen with no list
        (`NO_LIST`). Rows with `j >= t` (t > 0) are unused and hold NO_LIST."""
        window = self.window
        model = self.srm.surprise[rows]  # [C, T, 5]
        out = np.empty((len(rows), window, window, len(CLICK_COLUMNS)))
        out[..., : model.shape[-1]] = model[:, :, None, :]
        out[..., model.shape[-1] :] = [NO_LIST[c] for c in LIST_COLUMNS]
        steps, held = np.nonzero(np.tri(window - 1, dtype=bool))  # click at step s, list j <= s
        size = max(1, ROW_CHUNK // max(len(steps), 1))  # rows whose pairs make one chunk
        for lo in range(0, len(rows), size):
            part_rows = np.arange(lo, min(lo + size, len(rows)))
            local = np.repeat(part_rows, len(steps))  # into `out`
            r = np.asarray(rows)[local]  # into the stream
            s, h = np.tile(steps, len(part_rows)), np.tile(held, len(part_rows))
            part = list_columns(
                self.stream.targets[r, s],
                model[local, s + 1, 0],  # the click's logit, from its own surprise row
                self.lists.items[r, h],
                self.logits_at(r, s, h),
                self.valid_at(r, s, h),
            )
            out[local, s + 1, h, model.shape[-1] :] = part
        return out

    def surprise_rows(self, row: int, step: int, held: int) -> np.ndarray:
        """`[A, S]` rows of the clicks since list `held` was fetched, as the session keeps
        them (`DeviceSession.surprise_rows`): clicks at steps `held … step − 1`, or the
        last click alone when none came since."""
        first = held + 1 if step > held else step
        return self.click_rows[row, first : step + 1, held]

    def held_states(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (step t, list j <= t) pair a device can be in, as two `[P]` index arrays into
        `[T, T]`: each step with each list made at or before it (age `t − j`)."""
        return np.nonzero(np.tri(self.window, dtype=bool))

    def list_ages(self) -> np.ndarray:
        """`[T, T]` the age of list `j` at step `t`: `t − j` clicks since it was made (0 where
        `j > t`, a list that does not exist yet)."""
        steps = np.arange(self.window)
        return np.maximum(steps[:, None] - steps[None, :], 0)

    def fused_ranks(self, fusion: Fusion) -> np.ndarray:
        """`[U, T, T]` the target's rank in the final list of step `t` holding list `j`.

        Computed with `rerank_batch`, row by row the same as `DeviceSession.recommend`
        (history items removed, fused, stable sort), for every list a step can hold
        (`j <= t`), a chunk of users at a time; inf when the target is not shown, NaN for
        `j > t`. Memoised per fusion (`forget_ranks` drops them).
        """
        if fusion in self._ranks:
            return self._ranks[fusion]
        steps, held = self.held_states()
        ranks = np.full((self.num_users, self.window, self.window), np.nan)
        width = self.lists.items.shape[-1]
        for rows in self.row_chunks(len(steps)):
            r = rows[:, None]
            ranked = rerank_batch(
                self.lists.items[r, held].reshape(-1, width),
                self.lists.scores[r, held].reshape(-1, width),
                self.logits_at(r, steps, held).reshape(-1, width),
                self.valid_at(r, steps, held).reshape(-1, width),
                fusion,
                age=np.tile(steps - held, len(rows)),
            )
            targets = self.stream.targets[r, steps].reshape(-1)
            ranks[r, steps, held] = target_positions(ranked, targets).reshape(len(rows), -1)
        self._ranks[fusion] = ranks
        return ranks

    def rank_fusions(self, fusions: Sequence[Fusion], threads: int = 2) -> None:
        """`fused_ranks` of several fusions, `threads` at a time (numpy lets go of the GIL in
        its sorts and arithmetic; each fusion's ranks are what one thread alone computes)."""
        from concurrent.futures import ThreadPoolExecutor

        missing = list(dict.fromkeys(f for f in fusions if f not in self._ranks))
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(self.fused_ranks, missing))

    def forget_ranks(self, keep: Sequence[Fusion] = ()) -> None:
        """Drop the memoised ranks of every fusion but `keep` (each is `[U, T, T]` float64)."""
        self._ranks = {f: r for f, r in self._ranks.items() if f in keep}

    def observation(self, row: int, step: int, held: int) -> PolicyObservation:
        """What the policy of row `row` sees at `step` while holding list `held` (fetched then)."""
        return PolicyObservation(
            step=step,
            steps_since_request=step - held,
            items=self.lists.items[row, held],
            llm_scores=self.lists.scores[row, held],
            srm_logits=self.logits_at(row, step, held),
            history=self.stream.history(row, step),
            surprise=self.surprise_rows(row, step, held),
        )


def prepare_replay(
    stream: ReplayStream,
    generator: ListGenerator,
    model: Any,
    config: ReplayConfig | None = None,
    cache_dir: str | Path | None = None,
    dataset: str = "",
    full_ranking: bool = True,
    resume: ResumeStates | None = None,
    progress: bool = False,
) -> ReplayData:
    """Fresh lists and SRM tables of a stream, from the disk cache or computed once.

    Args:
        stream: the stream to replay.
        generator: the cloud generator (`num_items` is read from it for full ranking).
        model: the device SRM (a torch model; `make_runner` adapts it as a device does).
        config: n, L and batching of the lists.
        cache_dir: folder of the npz cache; None = compute in memory only.
        dataset: data-set label for the cache key (`dataset_label`).
        full_ranking: also rank all items with the SRM alone at every step.
        resume: runner states to continue from (see `compute_srm_tables`).
        progress: show progress bars.
    """
    lists = load_or_generate_lists(generator, stream, config, cache_dir, dataset, progress)
    num_items = int(getattr(model.config, "num_items", 0)) if full_ranking else 0
    config = config or ReplayConfig()
    srm = load_or_compute_srm_tables(
        model, stream, lists, num_items, cache_dir, resume, progress,
        workers=config.table_workers, backend=config.table_backend,
    )  # fmt: skip
    return ReplayData(stream, lists, srm)


# ---------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)  # array fields: compare the arrays, not the objects
class ReplayResult:
    """Per-step records of one policy on one stream.

    Attributes:
        label: the policy's label (plus fusion, when not the default).
        users: `[U]` data-set user index of each row.
        requested: `[U, T]` bool, a fresh list was requested at the step (the initial list
            is not a request).
        lists_used: `[U, T]` index `j` of the list shown at the step (age = t − j).
        ranks: `[U, T]` 0-based rank of the target in the final list; inf = not shown.
    """

    label: str
    users: np.ndarray
    requested: np.ndarray
    lists_used: np.ndarray
    ranks: np.ndarray

    @property
    def request_rate(self) -> float:
        """requests / steps (docs/design.md §3)."""
        return float(self.requested.mean())

    def step_metrics(self, ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
        """`{"HR@5": [U, T], "NDCG@5": [U, T], …}` per step."""
        out = {}
        for k in ks:
            out[f"HR@{k}"] = hit_rate(self.ranks, k)
            out[f"NDCG@{k}"] = ndcg(self.ranks, k)
        return out

    def user_metrics(self, ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
        """Per-user means over the steps, `[U]` each (the unit the bootstrap resamples)."""
        return {name: values.mean(axis=1) for name, values in self.step_metrics(ks).items()}

    def summary(self, ks: Sequence[int] = KS) -> dict[str, float]:
        """Request rate and mean metrics over all steps."""
        metrics = {name: float(v.mean()) for name, v in self.step_metrics(ks).items()}
        return {"request_rate": self.request_rate, **metrics}

    def records(self, ks: Sequence[int] = KS) -> list[dict[str, Any]]:
        """One dict per (user, step): user, step, requested, list_age, rank and metrics."""
        metrics = self.step_metrics(ks)
        out = []
        for row, user in enumerate(self.users):
            for t in range(self.ranks.shape[1]):
                record = {
                    "user": int(user),
                    "step": t,
                    "requested": bool(self.requested[row, t]),
                    "list_age": int(t - self.lists_used[row, t]),
                    "rank": float(self.ranks[row, t]),
                }
                record.update({name: float(v[row, t]) for name, v in metrics.items()})
                out.append(record)
        return out


def result_label(policy: RequestPolicy, fusion: Fusion, label: str | None) -> str:
    if label is not None:
        return label
    return policy.label if fusion == RankSigmoidFusion() else f"{policy.label}|{fusion.name}"


# ---------------------------------------------------------------- the fast replay


def _replay_row(data: ReplayData, row: int, policy: RequestPolicy) -> tuple[np.ndarray, np.ndarray]:
    """One user's decisions: `[T]` requested and `[T]` list held after the decision."""
    requested = np.zeros(data.window, dtype=bool)
    used = np.zeros(data.window, dtype=np.int64)
    held = 0  # the initial list is the list for the history before step 0
    for t in range(data.window):
        if policy.decide(data.observation(row, t, held)):
            requested[t], held = True, t
        used[t] = held
    return requested, used


def replay(
    data: ReplayData,
    policy: RequestPolicy,
    fusion: Fusion | None = None,
    label: str | None = None,
) -> ReplayResult:
    """Replay the stream with one policy (a per-user `spawn(user)` copy for each row).

    Args:
        data: the prepared stream.
        policy: the request policy (not modified; its copies are).
        fusion: how the device fuses LLM ranks and SRM scores; LSC4Rec's α = 0.5 if None.
        label: name for tables; the policy's label by default.
    Returns:
        per-step records, identical to `replay_sessions` for the same policy and seed.
    """
    fusion = RankSigmoidFusion() if fusion is None else fusion
    requested = np.zeros((data.num_users, data.window), dtype=bool)
    used = np.zeros((data.num_users, data.window), dtype=np.int64)
    for row, user in enumerate(data.stream.users):
        requested[row], used[row] = _replay_row(data, row, policy.spawn(int(user)))
    return replay_result(data, policy, fusion, label, requested, used)


def replay_result(
    data: ReplayData,
    policy: RequestPolicy,
    fusion: Fusion,
    label: str | None,
    requested: np.ndarray,
    used: np.ndarray,
) -> ReplayResult:
    """The result of `[U, T]` decisions: each step's target rank in the held list, fused."""
    steps = np.arange(data.window)[None, :]
    ranks = data.fused_ranks(fusion)[np.arange(data.num_users)[:, None], steps, used]  # [U, T]
    used = used.astype(np.int16)  # a step index: a sweep holds one [U, T] of them per point
    return ReplayResult(
        result_label(policy, fusion, label), data.stream.users, requested, used, ranks
    )


def reference_result(label: str, data: ReplayData, ranks: np.ndarray) -> ReplayResult:
    """A result with no requests and given ranks (e.g. the SRM alone over all items)."""
    shape = (data.num_users, data.window)
    return ReplayResult(
        label,
        data.stream.users,
        np.zeros(shape, dtype=bool),
        np.zeros(shape, dtype=np.int64),
        np.asarray(ranks, dtype=np.float64).reshape(shape),
    )
