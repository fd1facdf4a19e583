"""Running many devices: a local process or thread pool, or Ray; the fleet's result."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.optional import import_ray
from simulations.fleet.config import FleetConfig
from simulations.fleet.device import DeviceRecord, DeviceTask, RequestLog, run_device
from simulations.replay import ReplayResult

# ---------------------------------------------------------------- the fleet


def device_tasks(stream) -> list[DeviceTask]:
    """One task per stream row (`simulations.replay.ReplayStream`)."""
    return [
        DeviceTask(row, int(user), stream.history(row, 0).copy(), stream.targets[row].copy())
        for row, user in enumerate(stream.users)
    ]


@dataclass
class FleetResult:
    """Every device's records, in stream-row order, and the fleet's wall time."""

    config: FleetConfig
    devices: list[DeviceRecord]
    wall_s: float
    events: dict[str, float] = field(default_factory=dict)  # e.g. server stop/restart times

    def _stack(self, name: str) -> np.ndarray:
        return np.stack([getattr(d, name) for d in self.devices])  # [U, T]

    def replay_result(self, label: str | None = None):
        """The records as a `ReplayResult`, comparable with `simulations.replay.replay`."""

        users = np.asarray([d.user for d in self.devices], dtype=np.int64)
        return ReplayResult(
            label or self.config.policy,
            users,
            self._stack("requested"),
            self._stack("lists_used"),
            self._stack("ranks"),
        )

    @property
    def requests(self) -> list[RequestLog]:
        return [r for d in self.devices for r in d.requests]

    def summary(self) -> dict[str, Any]:
        """Users, steps, request rate, metrics, requests ok/failed, latency and throughput."""
        records = self.replay_result()
        stream_requests = [r for r in self.requests if r.step >= 0]
        ok = [r.latency_s for r in self.requests if r.ok]
        steps = int(records.ranks.size)
        out: dict[str, Any] = {
            "users": len(self.devices),
            "steps": steps,
            "steps_observed": int(sum(d.steps_observed for d in self.devices)),
            **records.summary(),
            "requests": len(stream_requests),
            "requests_ok": sum(r.ok for r in stream_requests),
            "requests_failed": sum(not r.ok for r in stream_requests),
            "initial_failed": sum(not r.ok for r in self.requests if r.step < 0),
            "initial_requests": sum(r.step < 0 for r in self.requests),
            "any_request_ok": any(r.ok for r in self.requests),
            "failures_by_status": dict(
                sorted(Counter(r.status for r in self.requests if not r.ok).items())
            ),
            "latency_p50_ms": _percentile_ms(ok, 50),
            "latency_p95_ms": _percentile_ms(ok, 95),
            "wall_s": self.wall_s,
            "steps_per_s": steps / self.wall_s if self.wall_s else 0.0,
            "requests_per_s": len(self.requests) / self.wall_s if self.wall_s else 0.0,
        }
        return out


def _percentile_ms(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1000) if len(values) else None


def _pool(config: FleetConfig) -> Executor:
    if config.backend == "thread":
        return ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="device")
    import multiprocessing

    # spawn, not fork: the parent may run gRPC threads (an in-process server), and a forked
    # child would inherit their locks mid-use.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=config.workers, mp_context=context)


@contextmanager
def fleet_pool(config: FleetConfig) -> Iterator[Executor]:
    """A local pool for `config.backend`, to share across several fleets (workers stay warm)."""
    if config.backend == "ray":
        raise ValueError("fleet_pool is for the local backends; ray schedules its own workers")
    pool = _pool(config)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_local(tasks: list[DeviceTask], config: FleetConfig, pool: Executor | None):
    if pool is not None:
        return list(pool.map(run_device, tasks, [config] * len(tasks)))
    with fleet_pool(config) as own:
        return list(own.map(run_device, tasks, [config] * len(tasks)))


def _run_ray(tasks: list[DeviceTask], config: FleetConfig) -> list[DeviceRecord]:
    """Every device as a Ray task (one CPU each), at most `workers` in flight."""
    ray = import_ray()
    ray.init(ignore_reinit_error=True)
    remote = ray.remote(num_cpus=1)(run_device)
    pending, done = [], []
    for task in tasks:
        if len(pending) >= config.workers:
            ready, pending = ray.wait(pending, num_returns=1)
            done += ray.get(ready)
        pending.append(remote.remote(task, config))
    done += ray.get(pending)
    return sorted(done, key=lambda record: record.row)


def run_fleet(stream, config: FleetConfig, pool: Executor | None = None) -> FleetResult:
    """Run every user of `stream` as a live device against `config.target`.

    Args:
        stream: a `simulations.replay.ReplayStream` (users, known clicks, `T` steps).
        config: the fleet.
        pool: a warm executor from `fleet_pool` (local backends only); None = a new one.
    Returns:
        every device's records, in stream-row order.
    Raises:
        FleetBackendError: the backend cannot run here (Ray missing).
    """
    tasks = device_tasks(stream)
    started = time.perf_counter()
    if config.backend == "ray":
        devices = _run_ray(tasks, config)
    else:
        devices = _run_local(tasks, config, pool)
    return FleetResult(config, devices, time.perf_counter() - started)
