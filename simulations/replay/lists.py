"""The generator's fresh list for every (user, step) of a stream, made once, batched, cached."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.cache import digest, load_npz, save_npz
from shared.candidates import CandidateList, request_parts
from shared.progress import progress_bar
from simulations.replay.keys import generator_fingerprint
from simulations.replay.parallel import run_tasks
from simulations.replay.stream import CACHE_FORMAT, ListGenerator, ReplayConfig, ReplayStream

# ---------------------------------------------------------------- fresh lists


@dataclass(frozen=True, eq=False)  # array fields: compare the arrays, not the objects
class FreshLists:
    """The generator's fresh list for every (user, step) of a stream.

    Attributes:
        items: `[U, T, N]` int64; `[u, t]` is made from the last `request_history` clicks
            before step `t`, the older ones excluded, so it holds no item clicked before `t`;
            `[u, 0]` is also the initial list. 0 = padding.
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


def stream_requests(
    stream: ReplayStream, request_history: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """What a device sends at every (user, step), row-major: the last `L` clicks before the
    step and the older clicks to exclude (`shared.candidates.request_parts`)."""
    parts = [
        request_parts(stream.history(row, t), request_history)
        for row in range(stream.num_users)
        for t in range(stream.window)
    ]
    return [recent for recent, _ in parts], [older for _, older in parts]


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
    exclude: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`[R, N]` items and scores of one fresh list per history (and its exclusion), in chunks
    (one bar update each)."""

    items, scores = [], []
    bar = progress_bar(total=len(histories), desc="fresh lists", unit="list", enabled=progress)
    for start in range(0, len(histories), config.chunk_size):
        end = start + config.chunk_size
        chunk = histories[start:end]
        lists = generator.generate(
            chunk,
            n=config.n,
            batch_size=config.batch_size,
            exclude=None if exclude is None else exclude[start:end],
        )
        chunk_items, chunk_scores = _stack_lists(lists, config.n)
        items.append(chunk_items)
        scores.append(chunk_scores)
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(items), np.concatenate(scores)


TASK_CHUNKS = 16  # generate calls (of `chunk_size` requests) per worker task


def generate_lists_parallel(
    generator: ListGenerator,
    histories: Sequence[np.ndarray],
    config: ReplayConfig,
    progress: bool = False,
    exclude: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`generate_lists` with its requests split over `config.table_workers` processes (or Ray
    tasks). Each task starts at a multiple of `chunk_size`, so the generator sees the same
    batches as in one process and returns the same lists."""
    size = config.chunk_size * TASK_CHUNKS
    tasks = [
        (
            generator,
            histories[lo : lo + size],
            None if exclude is None else exclude[lo : lo + size],
            config,
        )
        for lo in range(0, len(histories), size)
    ]
    items = np.zeros((len(histories), config.n), dtype=np.int64)
    scores = np.zeros((len(histories), config.n), dtype=np.float32)
    results = run_tasks(
        _lists_task, tasks, config.table_workers, config.table_backend, "fresh lists", progress
    )
    for lo, (part_items, part_scores) in zip(range(0, len(histories), size), results):
        items[lo : lo + len(part_items)], scores[lo : lo + len(part_items)] = (
            part_items,
            part_scores,
        )
    return items, scores


def _lists_task(
    generator: ListGenerator,
    histories: Sequence[np.ndarray],
    exclude: Sequence[np.ndarray] | None,
    config: ReplayConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """One worker's share of the requests (one torch thread, as the one-process default)."""
    import torch

    torch.set_num_threads(1)
    return generate_lists(generator, histories, config, exclude=exclude)


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
        # Requests exclude the whole history (the older clicks sent apart from the last L).
        "exclusion": "whole-history",
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
    key_digest = digest(key)
    path = Path(cache_dir) / f"lists-{stream.role}-{key_digest}.npz" if cache_dir else None
    shape = (stream.num_users, stream.window, config.n)
    version = str(getattr(generator, "model_version", ""))
    cached = load_npz(path, key) if path else None
    if cached is not None and cached["items"].shape == shape:
        return FreshLists(
            cached["items"], cached["scores"], version, config.request_history, key_digest, True
        )
    histories, exclusions = stream_requests(stream, config.request_history)
    if config.table_workers > 1 or config.table_backend == "ray":
        items, scores = generate_lists_parallel(generator, histories, config, progress, exclusions)
    else:
        items, scores = generate_lists(generator, histories, config, progress, exclusions)
    items, scores = items.reshape(shape), scores.reshape(shape)
    if path:
        save_npz(path, key, {"items": items, "scores": scores})
    return FreshLists(items, scores, version, config.request_history, key_digest, False)
