"""Replay of the online stream (DESIGN.md §3) against cached fresh lists, for any request policy.

What a device shows at a stream step depends on the policy only through *which* list it
holds: at step `t` it is the fresh list made for the history before some step `j <= t`
(`j = 0` is the initial list, made from `s_1 … s_{n−T}`; a request at step `t` makes it
`j = t`). Everything expensive is therefore computed once, before any policy runs:

    fresh lists   the generator's list for every (user, step), batched    -> npz disk cache
    SRM logits    of list j at step t for every j <= t, by stepping the
                  same runner the device uses, click by click              -> npz disk cache
    fused ranks   the target's rank in the final list of (t, j), per fusion  (in memory)

A policy's replay is then only its decisions: each user's policy copy (`spawn(user)`) is
asked `decide(obs)` with the very `PolicyObservation` a `DeviceSession` builds, the held
list moves to `j = t` on a request, and the step's target rank is looked up.
`replay_sessions` runs the same stream through `DeviceSession` itself (a cache-reading
fetch function, and either the precomputed logits or the real SRM runner) and gives the
same records, bit for bit; it is the bridge a live fleet is tested against.

    stream = stream_from_split(split, "test")
    data = prepare_replay(stream, generator, srm, cache_dir="runs/replay_cache")
    result = replay(data, RandomPolicy(p=0.1))
    result.request_rate, result.summary()

Policy random streams are keyed by the data set's user index (`stream.users`), so a live
device for user `u` must use `policy.spawn(u)` to draw the same numbers.

Letters used in shape comments:
    U  stream users   T  stream steps   N  list length   I  num_items + 1   M  flattened rows
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from device.driver import run_stream
from device.fusion import Fusion, RankSigmoidFusion, rerank_batch
from device.policies import PolicyObservation, RequestPolicy
from device.session import DeviceSession, SessionConfig, SRMRunner, make_runner
from shared.candidates import CandidateList
from shared.metrics import full_ranking_ranks, hit_rate, ndcg
from shared.splits import StreamSplit

CACHE_FORMAT = 1  # bump when the npz layout changes; old files are then recomputed
KS = (5, 10, 20)  # metric cut-offs of the protocol
ROLES = ("test", "valid")


class ListGenerator(Protocol):
    """What the replay needs from the cloud generator (`cloud.generator.CandidateGenerator`)."""

    model_version: str

    def generate(
        self, histories: Sequence[Sequence[int]], n: int = 50, batch_size: int = 32
    ) -> list[CandidateList]: ...


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ReplayConfig:
    """How fresh lists are made and cached."""

    n: int = 50  # candidates per list (DESIGN.md §1 default)
    request_history: int = 50  # L: most recent clicks sent with a request (DESIGN.md §3)
    batch_size: int = 32  # requests the generator decodes together (bounds its memory)
    chunk_size: int = 256  # requests per generate call, i.e. per progress-bar update

    def __post_init__(self) -> None:
        for name in ("n", "request_history", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


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

    test:  history `s_1 … s_{n−T}`, steps `s_{n−T+1} … s_n` (DESIGN.md §3).
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


# ---------------------------------------------------------------- disk cache


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _load_npz(path: Path, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file whose stored key equals `key`; None if absent or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != json.dumps(key, sort_keys=True):
                return None
            return {name: npz[name] for name in npz.files if name != "key"}
    except (OSError, ValueError, KeyError):  # a truncated or foreign file: recompute it
        return None


def _save_npz(path: Path, key: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (a temporary file, then rename), so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, key=np.asarray(json.dumps(key, sort_keys=True)), **arrays)
    os.replace(tmp, path)


def generator_fingerprint(generator: Any) -> str:
    """`model_version` plus a hash of the decoding config: both decide what lists come out."""
    version = str(getattr(generator, "model_version", "") or type(generator).__name__)
    config = getattr(generator, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        version += "+" + _digest(config.to_dict())[:8]
    return version


def srm_fingerprint(model: Any) -> str:
    """`<name>-<hash of config and weights>` of a torch SRM (changes whenever they do)."""
    h = hashlib.sha256(str(getattr(model, "name", type(model).__name__)).encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return f"{getattr(model, 'name', 'srm')}-{h.hexdigest()[:12]}"


def dataset_label(dataset: Any, seed: int | None = None) -> str:
    """`name/users/items/interactions[/seed]`: the data-set part of a cache key."""
    sizes = f"{dataset.num_users}u/{dataset.num_items}i/{dataset.num_interactions}x"
    return f"{dataset.name}/{sizes}" + ("" if seed is None else f"/seed{seed}")


# ---------------------------------------------------------------- fresh lists


@dataclass(frozen=True, eq=False)  # array fields: compare the arrays, not the objects
class FreshLists:
    """The generator's fresh list for every (user, step) of a stream.

    Attributes:
        items: `[U, T, N]` int64; `[u, t]` is made from the last `request_history` clicks
            before step `t`, so `[u, 0]` is also the initial list. 0 = padding.
        scores: `[U, T, N]` float32 LLM log-probabilities, best first.
        model_version: the generator's version string, stamped on every `CandidateList`.
        request_history: `L`, clicks sent with each request.
        key: hash of the cache key the lists were made under.
        from_cache: whether they were read from disk.
    """

    items: np.ndarray
    scores: np.ndarray
    model_version: str
    request_history: int
    key: str = ""
    from_cache: bool = False

    def __post_init__(self) -> None:
        if self.items.ndim != 3 or self.items.shape != self.scores.shape:
            raise ValueError(
                f"items and scores must both be [U, T, N], got {self.items.shape}, "
                f"{self.scores.shape}"
            )

    def candidates(self, row: int, step: int) -> CandidateList:
        """The list made for the history before `step`, as the cloud would return it."""
        return CandidateList(self.items[row, step], self.scores[row, step], self.model_version)


def request_histories(stream: ReplayStream, request_history: int) -> list[np.ndarray]:
    """The histories a device sends, row-major over (user, step): last `L` clicks before it."""
    return [
        stream.history(row, t)[-request_history:]
        for row in range(stream.num_users)
        for t in range(stream.window)
    ]


def _stack_lists(lists: Sequence[CandidateList], n: int) -> tuple[np.ndarray, np.ndarray]:
    """`[R, n]` items and scores; a list shorter than `n` is padded with id 0, score -inf."""
    items = np.zeros((len(lists), n), dtype=np.int64)
    scores = np.full((len(lists), n), -np.inf, dtype=np.float32)
    for row, cands in enumerate(lists):
        width = min(len(cands), n)
        items[row, :width] = cands.items[:width]
        scores[row, :width] = cands.scores[:width]
    return items, scores


def generate_lists(
    generator: ListGenerator,
    histories: Sequence[np.ndarray],
    config: ReplayConfig,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`[R, N]` items and scores of one fresh list per history, in chunks (one bar update each)."""
    from shared.progress import progress_bar

    items, scores = [], []
    bar = progress_bar(total=len(histories), desc="fresh lists", unit="list", enabled=progress)
    for start in range(0, len(histories), config.chunk_size):
        chunk = histories[start : start + config.chunk_size]
        lists = generator.generate(chunk, n=config.n, batch_size=config.batch_size)
        chunk_items, chunk_scores = _stack_lists(lists, config.n)
        items.append(chunk_items)
        scores.append(chunk_scores)
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(items), np.concatenate(scores)


def list_cache_key(
    generator: Any, stream: ReplayStream, config: ReplayConfig, dataset: str
) -> dict[str, Any]:
    """What the fresh lists depend on: generator, data set, stream (incl. T), n and L."""
    return {
        "format": CACHE_FORMAT,
        "generator": generator_fingerprint(generator),
        "dataset": dataset,
        "role": stream.role,
        "window": stream.window,
        "stream": stream.digest,
        "n": config.n,
        "request_history": config.request_history,
    }


def load_or_generate_lists(
    generator: ListGenerator,
    stream: ReplayStream,
    config: ReplayConfig | None = None,
    cache_dir: str | Path | None = None,
    dataset: str = "",
    progress: bool = False,
) -> FreshLists:
    """Fresh lists for every (user, step) of `stream`, read from the cache when it has them.

    Args:
        generator: the cloud generator (called only on a cache miss).
        stream: the stream to make lists for.
        config: n, L and batching.
        cache_dir: folder of the npz cache; None = no disk cache.
        dataset: data-set label for the key (see `dataset_label`).
        progress: show a progress bar while generating.
    Returns:
        the lists; `from_cache` says whether the generator was skipped.
    """
    config = ReplayConfig() if config is None else config
    key = list_cache_key(generator, stream, config, dataset)
    digest = _digest(key)
    path = Path(cache_dir) / f"lists-{stream.role}-{digest}.npz" if cache_dir else None
    shape = (stream.num_users, stream.window, config.n)
    version = str(getattr(generator, "model_version", ""))
    cached = _load_npz(path, key) if path else None
    if cached is not None and cached["items"].shape == shape:
        return FreshLists(
            cached["items"], cached["scores"], version, config.request_history, digest, True
        )
    items, scores = generate_lists(
        generator, request_histories(stream, config.request_history), config, progress
    )
    items, scores = items.reshape(shape), scores.reshape(shape)
    if path:
        _save_npz(path, key, {"items": items, "scores": scores})
    return FreshLists(items, scores, version, config.request_history, digest, False)


# ---------------------------------------------------------------- SRM outputs


@dataclass(frozen=True, eq=False)  # array fields: compare the arrays, not the objects
class SRMTables:
    """The SRM's policy-independent outputs on a stream.

    Attributes:
        logits: `[U, T, T, N]` float32; `[u, t, j]` = the runner's `score_items` of list `j`
            at step `t` (after the clicks before `t`), for `j <= t`; 0 for `j > t`.
        full_ranks: `[U, T]` the target's rank among all items, history masked (SRM alone,
            no cloud); NaN when not computed.
        from_cache: whether they were read from disk.
    """

    logits: np.ndarray
    full_ranks: np.ndarray
    from_cache: bool = False


ResumeStates = dict[int, tuple[int, Any]]  # user -> (clicks folded, runner state)


def _user_tables(
    runner: SRMRunner,
    stream: ReplayStream,
    row: int,
    lists: np.ndarray,
    num_items: int,
    resume: ResumeStates | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`[T, T, N]` logits and `[T]` full ranks of one user, stepping the runner click by click."""
    seq, start, window = stream.sequences[row], int(stream.starts[row]), stream.window
    user = int(stream.users[row])
    folded, state = (0, runner.init_state())
    if resume is not None and user in resume and resume[user][0] <= start:
        folded, state = resume[user]
    for item in seq[folded:start]:
        state = runner.step(state, int(item))
    logits = np.zeros((window, window, lists.shape[-1]), dtype=np.float32)
    full = np.full(window, np.nan)
    all_items = np.arange(num_items + 1) if num_items else None
    for t in range(window):
        history = seq[: start + t]
        for j in range(t + 1):
            logits[t, j] = runner.score_items(state, history, lists[j])
        if all_items is not None:
            scores = runner.score_items(state, history, all_items)[None]  # [1, I]
            full[t] = full_ranking_ranks(scores, seq[start + t : start + t + 1], [history])[0]
        state = runner.step(state, int(seq[start + t]))
    if resume is not None:
        resume[user] = (start + window, state)
    return logits, full


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
    from shared.progress import progress_bar

    shape = (stream.num_users, stream.window, stream.window, lists.items.shape[-1])
    logits = np.zeros(shape, dtype=np.float32)
    full = np.full((stream.num_users, stream.window), np.nan)
    rows = progress_bar(
        range(stream.num_users), desc=f"SRM on {stream.role} stream", enabled=progress
    )
    for row in rows:
        logits[row], full[row] = _user_tables(
            runner, stream, row, lists.items[row], num_items, resume
        )
    return SRMTables(logits, full)


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

    The key holds the SRM's fingerprint (weights and config), the lists' key and whether
    full ranks were computed.
    """
    key = {
        "format": CACHE_FORMAT,
        "srm": srm_fingerprint(model),
        "lists": lists.key,
        "stream": stream.digest,
        "num_items": num_items,
    }
    path = Path(cache_dir) / f"srm-{stream.role}-{_digest(key)}.npz" if cache_dir else None
    cached = _load_npz(path, key) if path and lists.key else None
    if cached is not None:
        return SRMTables(cached["logits"], cached["full_ranks"], True)
    tables = compute_srm_tables(make_runner(model), stream, lists, num_items, resume, progress)
    if path and lists.key:
        _save_npz(path, key, {"logits": tables.logits, "full_ranks": tables.full_ranks})
    return tables


# ---------------------------------------------------------------- the replay data


def _first_positions(seq: np.ndarray, size: int) -> np.ndarray:
    """`[size]` index of each item's first click in `seq` (`len(seq)` if never clicked)."""
    pos = np.full(size, len(seq), dtype=np.int64)
    order = np.arange(len(seq))[::-1]
    pos[seq[::-1]] = order  # reversed, so the first click's index is written last
    return pos


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
        srm: the SRM's logits of those lists (`[U, T, T, N]`).
    Raises:
        ValueError: the three do not fit together.
    """

    def __init__(self, stream: ReplayStream, lists: FreshLists, srm: SRMTables) -> None:
        users, window = stream.num_users, stream.window
        if lists.items.shape[:2] != (users, window):
            raise ValueError(f"lists are {lists.items.shape[:2]}, the stream is {(users, window)}")
        if srm.logits.shape != (users, window, window, lists.items.shape[2]):
            raise ValueError(f"SRM logits {srm.logits.shape} do not fit lists {lists.items.shape}")
        self.stream = stream
        self.lists = lists
        self.srm = srm
        self._ranks: dict[Fusion, np.ndarray] = {}

    @property
    def num_users(self) -> int:
        return self.stream.num_users

    @property
    def window(self) -> int:
        return self.stream.window

    @cached_property
    def logits(self) -> np.ndarray:
        """`[U, T, T, N]` float64, the values a runner's `score_items` returned."""
        return self.srm.logits.astype(np.float64)

    @cached_property
    def valid(self) -> np.ndarray:
        """`[U, T, T, N]` bool: slot of list `j` may be shown at step `t` (not padding, unseen)."""
        items = self.lists.items
        size = int(max(items.max(), max(int(s.max()) for s in self.stream.sequences))) + 1
        steps = np.arange(self.window)[:, None, None]  # [T, 1, 1]
        out = np.empty((self.num_users, self.window, *items.shape[1:]), dtype=bool)
        for row in range(self.num_users):
            pos = _first_positions(self.stream.sequences[row], size)[items[row]]  # [T(j), N]
            seen_before = self.stream.starts[row] + steps  # clicks before step t
            out[row] = (items[row] != 0)[None] & (pos[None] >= seen_before)  # [T(t), T(j), N]
        return out

    def fused_ranks(self, fusion: Fusion, chunk_rows: int = 65536) -> np.ndarray:
        """`[U, T, T]` the target's rank in the final list of step `t` holding list `j`.

        Computed with `rerank_batch`, row by row the same as `DeviceSession.recommend`
        (history items removed, fused, stable sort); inf when the target is not shown,
        NaN for `j > t`. Memoised per fusion.
        """
        if fusion in self._ranks:
            return self._ranks[fusion]
        users, window, width = self.num_users, self.window, self.lists.items.shape[-1]
        full = (users, window, window, width)
        items = np.broadcast_to(self.lists.items[:, None], full).reshape(-1, width)  # [M, N]
        llm = np.broadcast_to(self.lists.scores[:, None], full).reshape(-1, width)  # [M, N]
        logits = self.logits.reshape(-1, width)
        valid = self.valid.reshape(-1, width)
        targets = np.broadcast_to(self.stream.targets[:, :, None], full[:3]).reshape(-1)  # [M]
        ranks = np.empty(len(targets))
        for lo in range(0, len(targets), chunk_rows):
            part = slice(lo, lo + chunk_rows)
            ranked = rerank_batch(items[part], llm[part], logits[part], valid[part], fusion)
            ranks[part] = target_positions(ranked, targets[part])
        ranks = ranks.reshape(users, window, window)
        ranks[:, ~np.tri(window, dtype=bool)] = np.nan  # list j does not exist yet at step t < j
        self._ranks[fusion] = ranks
        return ranks

    def observation(self, row: int, step: int, held: int) -> PolicyObservation:
        """What the policy of row `row` sees at `step` while holding list `held` (fetched then)."""
        return PolicyObservation(
            step=step,
            steps_since_request=step - held,
            items=self.lists.items[row, held],
            llm_scores=self.lists.scores[row, held],
            srm_logits=self.logits[row, step, held],
            history=self.stream.history(row, step),
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
    srm = load_or_compute_srm_tables(model, stream, lists, num_items, cache_dir, resume, progress)
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
        """requests / steps (DESIGN.md §3)."""
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


def _label(policy: RequestPolicy, fusion: Fusion, label: str | None) -> str:
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
    table = data.fused_ranks(fusion)  # [U, T, T]
    requested = np.zeros((data.num_users, data.window), dtype=bool)
    used = np.zeros((data.num_users, data.window), dtype=np.int64)
    for row, user in enumerate(data.stream.users):
        requested[row], used[row] = _replay_row(data, row, policy.spawn(int(user)))
    steps = np.arange(data.window)[None, :]
    ranks = table[np.arange(data.num_users)[:, None], steps, used]  # [U, T]
    return ReplayResult(_label(policy, fusion, label), data.stream.users, requested, used, ranks)


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


# ---------------------------------------------------------------- through DeviceSession


class CachedFetch:
    """A device's `fetch(history)` for one stream user, answered from the fresh-list cache.

    It looks the sent history up (the last `L` clicks before some step) and returns that
    step's cached list, as the cloud would. `calls` counts requests.

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

    def __call__(self, history: np.ndarray) -> CandidateList:
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

    def score_items(self, state: int, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        step = state - self.start
        held = self._lists.get(np.asarray(items, dtype=np.int64).tobytes())
        if held is None or not 0 <= step < self.data.window or held > step:
            raise KeyError(f"no precomputed logits for these items at step {step}")
        return self.data.logits[self.row, step, held].copy()


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
    return ReplayResult(_label(policy, fusion, label), data.stream.users, requested, used, ranks)
