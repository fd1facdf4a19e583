"""Live simulated device fleets: every stream user as a device talking to the real gRPC server.

Each device replays its user's online stream (DESIGN.md §3) exactly as a phone would:

    start      fetch the initial list for `s_1 … s_{n−T}` (not counted as a request)
    each step  the policy decides -> maybe `GetCandidates` with the last L clicks (deadline,
               retries) -> rerank + fuse the cached list -> the target's rank is recorded
               -> the click is observed (history grows, the SRM state takes its step)

The per-step logic is `device.session.DeviceSession`, the same code the replay engine runs
through (`simulations.replay.replay_sessions`), so a live fleet and a replay of the same
policy and seed give the same ranks when the server returns the lists the replay cached.
A failed request keeps the cached list and never loses a click; failures are counted.

    stream = stream_from_split(split, "test")
    result = run_fleet(stream, FleetConfig(target="127.0.0.1:50051", srm_dir="runs/srm"))
    result.summary()                      # request rate, NDCG/HR, requests ok/failed, latency

Devices run in a local process pool by default (`backend="process"`, one gRPC channel and
one SRM per worker process), in threads (`"thread"`, cheap, for tests), or on Ray (`"ray"`,
an optional dependency imported only when asked for). `run_fleet_with_restart` stops and
restarts an in-process server on the same port while a fleet runs (the fault drill).

Letters used in shape comments:
    U  stream users   T  stream steps
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("process", "thread", "ray")
RAY_HINT = "pip install 'lsc4rec[ray]'"


class FleetBackendError(RuntimeError):
    """A fleet backend cannot run here (e.g. Ray is not installed)."""


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FleetConfig:
    """What every simulated device runs and how it talks to the cloud."""

    target: str = "127.0.0.1:50051"  # the server, host:port or dns:///host:port
    srm_dir: str = ""  # SRM checkpoint folder (train-srm); every worker loads it once
    policy: str = "always"  # request policy spec, see `parse_policy`
    fusion: str = "lsc4rec"  # device fusion (device.fusion.FUSIONS)
    seed: int = 0  # policies' random streams (each user: policy.spawn(user))
    workers: int = 2  # concurrent device processes (or threads, or Ray tasks at once)
    backend: str = "process"  # process | thread | ray
    n: int = 50  # candidates per list (DESIGN.md §1)
    request_history: int = 50  # L: most recent clicks sent with a request (DESIGN.md §3)
    deadline_ms: float = 200.0  # per-attempt deadline; a device never waits long on the cloud
    max_attempts: int = 2  # attempts per fetch: one retry rides out a blip, not an outage
    total_timeout_ms: float = 1000.0  # budget of one fetch, retries and backoff included
    reconnect_backoff_s: float = 0.5  # channel reconnect cap: devices find a restarted server fast
    step_delay_ms: float = 0.0  # think time between clicks (0 = replay as fast as possible)
    token: str | None = field(default=None, repr=False)  # bearer token when the server wants one
    torch_threads: int = 1  # per worker: workers, not threads, are the fleet's parallelism

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("workers", "n", "request_history", "max_attempts", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("deadline_ms", "total_timeout_ms", "reconnect_backoff_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.step_delay_ms < 0:
            raise ValueError(f"step_delay_ms must be >= 0, got {self.step_delay_ms}")
        if not self.srm_dir:
            raise ValueError("srm_dir must name an SRM checkpoint folder")
        parse_policy(self.policy, self.seed)  # fail before any device starts
        from device.fusion import build_fusion

        build_fusion(self.fusion)

    def client_config(self):
        """The device client's config: deadlines, retries and reconnects of this fleet."""
        from device.client import ClientConfig

        return ClientConfig(
            target=self.target,
            timeout_s=self.deadline_ms / 1000,
            total_timeout_s=self.total_timeout_ms / 1000,
            max_attempts=self.max_attempts,
            initial_backoff_s=min(0.05, self.deadline_ms / 1000),
            max_backoff_s=max(0.05, self.deadline_ms / 1000),
            max_reconnect_backoff_s=self.reconnect_backoff_s,
            token=self.token,
        )


def parse_policy(spec: str, seed: int = 0):
    """A request policy from a spec: `never`, `always`, `random:P`, `periodic:M`,
    `consistency:THRESHOLD` or `consistency:MEASURE:THRESHOLD`.

    Raises:
        ValueError: unknown name, wrong number of fields, or a bad value (the message names
            the spec).
    """
    from device.policies import build_policy

    name, *args = spec.strip().split(":")
    fields: dict[str, Any] = {}
    try:
        if name in ("never", "always") and not args:
            pass
        elif name == "random" and len(args) == 1:
            fields["p"] = float(args[0])
        elif name == "periodic" and len(args) == 1:
            fields["m"] = int(args[0])
        elif name == "consistency" and len(args) in (1, 2):
            fields["threshold"] = float(args[-1])
            fields["measure"] = args[0] if len(args) == 2 else "rank_diff"
        else:
            raise ValueError("expected never, always, random:P, periodic:M or consistency[:M]:T")
        return build_policy(name, seed=seed, **fields)
    except (ValueError, KeyError) as err:
        raise ValueError(f"bad policy spec {spec!r}: {err}") from None


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


def _worker_model(config: FleetConfig):
    """The SRM of `config.srm_dir`, loaded once per worker."""
    key = ("srm", config.srm_dir)
    with _WORKER_LOCK:
        if key not in _WORKER_CACHE:
            import torch

            from device.checkpoint import load_srm

            torch.set_num_threads(config.torch_threads)
            _WORKER_CACHE[key] = load_srm(config.srm_dir)
        return _WORKER_CACHE[key]


def _worker_client(config: FleetConfig):
    """One gRPC client per worker and target (a channel is thread-safe and reconnects)."""
    from device.client import CandidateClient

    client_config = config.client_config()
    key = ("client", repr(client_config), config.token)
    with _WORKER_LOCK:
        if key not in _WORKER_CACHE:
            _WORKER_CACHE[key] = CandidateClient(client_config)
        return _WORKER_CACHE[key]


def _fetcher(client, config: FleetConfig, task: DeviceTask, log: list[RequestLog], step: Callable):
    """`fetch(history)` for the session: calls the server and logs every attempt's outcome."""

    def fetch(history: np.ndarray):
        result = client.fetch(history, n=config.n, user_id=str(task.user))
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
    from device.driver import run_stream
    from device.fusion import build_fusion
    from device.session import DeviceSession, SessionConfig, make_runner

    client, log = _worker_client(config), []
    session_config = SessionConfig(top_k=config.n, request_history=config.request_history)
    policy = parse_policy(config.policy, config.seed).spawn(task.user)
    session = DeviceSession(
        make_runner(_worker_model(config)),
        policy,
        build_fusion(config.fusion),
        session_config,
        history=task.history,
    )
    streaming = []  # empty until the stream starts: the initial fetch is logged as step -1
    fetch = _fetcher(client, config, task, log, lambda: session.step if streaming else -1)
    initial = fetch(session.history[-config.request_history :])  # not a stream request
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
        from simulations.replay import ReplayResult

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


def _import_ray():
    try:
        import ray
    except ImportError:
        raise FleetBackendError(
            f"--backend ray needs Ray, which is not installed: {RAY_HINT}"
        ) from None
    return ray


def _run_ray(tasks: list[DeviceTask], config: FleetConfig) -> list[DeviceRecord]:
    """Every device as a Ray task (one CPU each), at most `workers` in flight."""
    ray = _import_ray()
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


# ---------------------------------------------------------------- the fault drill


@dataclass(frozen=True)
class FaultPlan:
    """When the server goes down during a fleet, and for how long."""

    after_requests: int = 10  # stop once the server has computed this many requests
    down_s: float = 1.0  # seconds the port stays closed before the same port serves again
    wait_s: float = 120.0  # give up waiting for the trigger after this long (fleet too short)

    def __post_init__(self) -> None:
        if self.after_requests < 1:
            raise ValueError(f"after_requests must be >= 1, got {self.after_requests}")
        if self.down_s < 0 or self.wait_s <= 0:
            raise ValueError(f"need down_s >= 0 and wait_s > 0, got {self.down_s}, {self.wait_s}")


def _wait_for(predicate: Callable[[], bool], timeout_s: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if stop.is_set() or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _restart_loop(server, make_server, plan: FaultPlan, events: dict, done: threading.Event):
    """Stop `server` once it computed `plan.after_requests`, then bring up a new one."""
    computed = lambda: server.servicer.batcher.stats.computed >= plan.after_requests  # noqa: E731
    if not _wait_for(computed, plan.wait_s, done):
        events["restarted"] = False
        return
    events["stopped_at"] = time.time()
    server.shutdown(grace_s=0)
    time.sleep(plan.down_s)
    events["server"] = make_server()
    events["restarted_at"] = time.time()
    events["restarted"] = True


def run_fleet_with_restart(
    generator,
    stream,
    config: FleetConfig,
    plan: FaultPlan | None = None,
    server_config=None,
    pool: Executor | None = None,
) -> FleetResult:
    """A fleet against an in-process server that is stopped and restarted on the same port.

    Args:
        generator: the cloud generator to serve.
        stream: the stream the devices replay.
        config: the fleet (its `target` is replaced by the server's loopback address).
        plan: when to stop the server and for how long.
        server_config: `cloud.server.ServerConfig` of both servers (default: `ServerConfig()`).
        pool: a warm executor from `fleet_pool`.
    Returns:
        the fleet's records; `events` holds `stopped_at` / `restarted_at` (time.time()).
    """
    from dataclasses import replace

    from cloud.server import ServerConfig, create_server

    plan, server_config = plan or FaultPlan(), server_config or ServerConfig(grace_s=1.0)
    server, port = create_server(generator, "127.0.0.1:0", server_config)
    address = f"127.0.0.1:{port}"
    events: dict[str, Any] = {}
    done = threading.Event()
    restart = lambda: create_server(generator, address, server_config)[0]  # noqa: E731
    watcher = threading.Thread(target=_restart_loop, args=(server, restart, plan, events, done))
    watcher.start()
    try:
        result = run_fleet(stream, replace(config, target=address), pool)
    finally:
        done.set()
        watcher.join()
        for live in (server, events.get("server")):
            if live is not None:
                live.shutdown(grace_s=0)
    result.events = {k: v for k, v in events.items() if k != "server"}
    return result


# ---------------------------------------------------------------- outputs


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fleet summaries as a markdown table."""
    head = (
        "| workers | users | steps | rate | NDCG@10 | HR@10 | req ok | req failed | "
        "p50 ms | p95 ms | steps/s | req/s |"
    )
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        cells = [
            r.get("workers", ""),
            r["users"],
            r["steps"],
            f"{r['request_rate']:.3f}",
            f"{r['NDCG@10']:.4f}",
            f"{r['HR@10']:.4f}",
            r["requests_ok"],
            r["requests_failed"],
            _ms(r["latency_p50_ms"]),
            _ms(r["latency_p95_ms"]),
            f"{r['steps_per_s']:.1f}",
            f"{r['requests_per_s']:.1f}",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _finite(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in values]


def fleet_payload(result: FleetResult, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary, config, fault events and per-device records, ready for JSON."""
    config = asdict(result.config)
    config.pop("token", None)  # never write a secret to disk
    summary = {"workers": result.config.workers, **result.summary()}
    devices = [
        {
            "user": d.user,
            "requested": d.requested.tolist(),
            "failed": d.failed.tolist(),
            "lists_used": d.lists_used.tolist(),
            "ranks": _finite(d.ranks),  # null = the target was not in the list
            "steps_observed": d.steps_observed,
        }
        for d in result.devices
    ]
    requests = [asdict(r) for r in result.requests]
    return {
        "meta": meta or {},
        "config": config,
        "summary": summary,
        "events": result.events,
        "devices": devices,
        "requests": requests,
    }


def write_fleet_json(
    result: FleetResult, path: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """Write `fleet_payload` to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fleet_payload(result, meta), indent=2) + "\n")
    return path
