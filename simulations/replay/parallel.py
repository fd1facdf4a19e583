"""The replay's preparation past one process: independent tasks (a chunk of users' fresh
lists or SRM tables each) run in spawned worker processes on this machine or as Ray tasks on
a cluster; results come back in task order, so the tables are the same as one process's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
) -> list[Any]:
    """`[function(*task) for task in tasks]`, spread over `workers` worker processes
    (`backend` "local", spawned: never a fork of a process holding threads) or as Ray tasks,
    one CPU each (`backend` "ray", `ray.init()` joins the cluster `RAY_ADDRESS` names).

    Raises:
        ValueError: an unknown backend, or Ray asked for and not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be local or ray, got {backend!r}")
    if backend == "ray":
        return _run_ray(function, tasks, workers)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(function, *task) for task in tasks]
        done = progress_bar(futures, desc=f"{desc} ({workers} workers)", enabled=progress)
        return [future.result() for future in done]


def _run_ray(function: Callable[..., Any], tasks: Sequence[tuple], workers: int) -> list[Any]:
    """The tasks as Ray tasks, at most `workers` in flight, results in task order."""
    ray = import_ray("--table-backend ray")
    ray.init(ignore_reinit_error=True)
    remote = ray.remote(num_cpus=1)(function)
    pending = [remote.remote(*task) for task in tasks[:workers]]
    results = []
    for task in tasks[workers:]:
        results.append(ray.get(pending.pop(0)))
        pending.append(remote.remote(*task))
    results += ray.get(pending)
    return results
