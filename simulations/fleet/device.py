"""One simulated device: its task (a user's stream), its per-worker model and client, and
`run_device`, which runs it through the stream driver against the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.bundle import load_bundle
from device.client import CandidateClient
from device.driver import run_stream
from device.fusion import build_fusion
from device.policies.spec import parse_policy
from device.session import DeviceSession, SessionConfig
from seqrec.checkpoint import load_srm
from seqrec.runners import make_runner
from simulations.fleet.config import FleetConfig

# ---------------------------------------------------------------- one device


@dataclass(frozen=True)
class DeviceTask:
    """One simulated device: a stream user's known clicks and the `T` clicks to replay."""

    row: int  # row in the stream (output order)
    user: int  # data-set user index (the policy's spawn key)
    history: np.ndarray  # [H] clicks before the stream, oldest first
    targets: np.ndarray  # [T] the clicks of the stream


@dataclass(frozen=True)
class RequestLog:
    """One fetch a device made (the initial one has step -1)."""

    user: int
    step: int  # stream step of the request; -1 = the initial list
    ok: bool
    status: str  # final gRPC status name
    attempts: int
    latency_s: float  # wall time of the fetch, retries included
    wall_time: float  # time.time() when it finished (comparable across processes)


@dataclass
class DeviceRecord:
    """What one device saw: per step `[T]` requested, failed, list held and target rank."""

    row: int
    user: int
    requested: np.ndarray  # [T] bool: the device asked for a fresh list at this step
    failed: np.ndarray  # [T] bool: … and the request failed (the cached list stayed)
    lists_used: np.ndarray  # [T] step the shown list was fetched for (0 = initial)
    ranks: np.ndarray  # [T] 0-based target rank in the final list; inf = not shown
    steps_observed: int  # clicks folded into the session: must equal T
    requests: list[RequestLog]


# Per worker process: loaded SRMs and open clients, reused by every device it runs.
_WORKER_CACHE: dict[tuple, Any] = {}
_WORKER_LOCK = threading.Lock()


def _once(key: tuple, make: Callable[[], Any]) -> Any:
    """`make()` the first time this worker asks for `key`, the same object afterwards."""
    with _WORKER_LOCK:
        if key not in _WORKER_CACHE:
            _WORKER_CACHE[key] = make()
        return _WORKER_CACHE[key]


def _worker_model(config: FleetConfig):
    """The SRM of `config.srm_dir`, loaded once per worker."""

    def load():
        import torch

        torch.set_num_threads(config.torch_threads)
        return load_srm(config.srm_dir)

    return _once(("srm", config.srm_dir), load)


def _worker_bundle(config: FleetConfig):
    """The device bundle of `config.bundle_dir`, loaded (and verified) once per worker."""
    return _once(("bundle", config.bundle_dir), lambda: load_bundle(config.bundle_dir))


def _session(task: DeviceTask, config: FleetConfig) -> DeviceSession:
    """The device of one task: the bundle's runtime, or the torch SRM with the config's policy
    and fusion. It shows every candidate (`top_k = n`), so the target's rank is measured."""
    if config.bundle_dir:
        return _worker_bundle(config).session(task.user, task.history, top_k=config.n)
    return DeviceSession(
        make_runner(_worker_model(config)),
        parse_policy(config.policy, config.seed).spawn(task.user),
        build_fusion(config.fusion),
        SessionConfig(top_k=config.n, request_history=config.request_history),
        history=task.history,
    )


def _worker_client(config: FleetConfig):
    """One gRPC client per worker and target (a channel is thread-safe and reconnects)."""
    client_config = config.client_config()
    key = ("client", repr(client_config), config.token)
    return _once(key, lambda: CandidateClient(client_config))


def _fetcher(client, config: FleetConfig, task: DeviceTask, log: list[RequestLog], step: Callable):
    """`fetch(history, exclude=...)` for the session: calls the server and logs every
    attempt's outcome."""

    def fetch(history: np.ndarray, exclude: np.ndarray = ()):
        result = client.fetch(history, n=config.n, user_id=str(task.user), exclude=exclude)
        log.append(
            RequestLog(
                task.user,
                step(),
                result.ok,
                result.status.name,
                result.attempts,
                result.latency_s,
                time.time(),
            )
        )
        return result

    return fetch


def run_device(task: DeviceTask, config: FleetConfig) -> DeviceRecord:
    """Replay one user's stream against the server (the unit of work of every backend)."""

    client, log = _worker_client(config), []
    session = _session(task, config)
    streaming = []  # empty until the stream starts: the initial fetch is logged as step -1
    fetch = _fetcher(client, config, task, log, lambda: session.step if streaming else -1)
    recent, older = session.request_items()
    initial = fetch(recent, exclude=older)  # not a stream request
    streaming.append(True)
    if initial.ok:
        session.update_candidates(initial.candidates)
    pause = (
        (lambda t, outcome: time.sleep(config.step_delay_ms / 1000))
        if config.step_delay_ms
        else None
    )
    record = run_stream(session, fetch, task.targets, config.n, after_step=pause)
    return DeviceRecord(
        task.row,
        task.user,
        record.requested,
        record.failed,
        record.lists_used,
        record.ranks,
        session.step,
        log,
    )
