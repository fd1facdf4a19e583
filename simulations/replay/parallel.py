"""The replay's preparation past one process: independent tasks (a chunk of users' fresh
lists or SRM tables each) run in spawned worker processes on this machine or as Ray tasks on
a cluster; results come back in task order, so the tables are the same as one process's."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shared.optional import import_ray
from shared.progress import progress_bar

BACKENDS = ("local", "ray")


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    workers: int,
    backend: str = "local",
    desc: str = "tasks",
    progress: bool = False,
) -> Iterator[Any]:
    """`function(*task)` of every task, yielded in task order, spread over `workers` worker
    processes (`backend` "local", spawned: never a fork of a process holding threads) or as
    Ray tasks, one CPU each (`backend` "ray", `ray.init()` joins the cluster `RAY_ADDRESS`
    names). A result is let go once yielded, so the caller can place it in a preallocated
    table instead of holding every chunk and a concatenated copy.

    Raises:
        ValueError: an unknown backend, or Ray asked for and not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be local or ray, got {backend!r}")
    if backend == "ray":
        yield from _run_ray(function, tasks, workers)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(function, *task) for task in tasks]
        bar = progress_bar(total=len(futures), desc=f"{desc} ({workers} workers)", enabled=progress)
        for index in range(len(futures)):
            result = futures[index].result()
            futures[index] = None  # the future held the result
            bar.update(1)
            yield result
        bar.close()


def _run_ray(function: Callable[..., Any], tasks: Sequence[tuple], workers: int) -> Iterator[Any]:
    """The tasks as Ray tasks, at most `workers` in flight, results in task order."""
    ray = import_ray("--table-backend ray")
    ray.init(ignore_reinit_error=True)
    remote = ray.remote(num_cpus=1)(function)
    pending = [remote.remote(*task) for task in tasks[:workers]]
    for task in tasks[workers:]:
        yield ray.get(pending.pop(0))
        pending.append(remote.remote(*task))
    for ref in pending:
        yield ray.get(ref)
