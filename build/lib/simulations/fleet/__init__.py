"""Live simulated device fleets: every stream user as a device talking to the real gRPC server.

Each device replays its user's online stream (docs/design.md §3) exactly as a phone would:

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

The package, one module per concern: `config`, `device` (one device), `backends` (many
devices), `fault` (the restart drill) and `report`.

Letters used in shape comments:
    U  stream users   T  stream steps
"""

from __future__ import annotations

from simulations.fleet.backends import FleetResult, device_tasks, fleet_pool, run_fleet
from simulations.fleet.config import (
    BACKENDS,
    RAY_HINT,
    FleetBackendError,
    FleetConfig,
    parse_policy,
)
from simulations.fleet.device import DeviceRecord, DeviceTask, RequestLog, run_device
from simulations.fleet.fault import FaultPlan, run_fleet_with_restart
from simulations.fleet.report import fleet_payload, summary_table, write_fleet_json

__all__ = [
    "BACKENDS",
    "DeviceRecord",
    "DeviceTask",
    "FaultPlan",
    "FleetBackendError",
    "FleetConfig",
    "FleetResult",
    "RAY_HINT",
    "RequestLog",
    "device_tasks",
    "fleet_payload",
    "fleet_pool",
    "parse_policy",
    "run_device",
    "run_fleet",
    "run_fleet_with_restart",
    "summary_table",
    "write_fleet_json",
]
