"""The fault drill: stop and restart an in-process server on the same port while a fleet runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from cloud.server import ServerConfig, create_server
from simulations.fleet.backends import FleetResult, run_fleet
from simulations.fleet.config import FleetConfig

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
