"""What every simulated device runs and how it reaches the cloud: `FleetConfig`, the
backends, and policy specs like `random:0.1`."""

from __future__ import annotations

from dataclasses import dataclass, field

from device.client import ClientConfig
from device.fusion import build_fusion
from device.policies.spec import parse_policy
from shared.optional import RAY_HINT, BackendUnavailable  # noqa: F401 (re-exported)

BACKENDS = ("process", "thread", "ray")
FleetBackendError = BackendUnavailable  # a fleet backend cannot run here (Ray not installed)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FleetConfig:
    """What every simulated device runs and how it talks to the cloud."""

    target: str = "127.0.0.1:50051"  # the server, host:port or dns:///host:port
    srm_dir: str = ""  # SRM checkpoint folder (train-srm); every worker loads it once
    bundle_dir: str = ""  # or a device bundle: its SRM graphs, policy and fusion (not srm_dir's)
    policy: str = "always"  # request policy spec, see `parse_policy`
    fusion: str = "lsc4rec"  # device fusion (device.fusion.FUSIONS)
    seed: int = 0  # policies' random streams (each user: policy.spawn(user))
    workers: int = 2  # concurrent device processes (or threads, or Ray tasks at once)
    backend: str = "process"  # process | thread | ray
    n: int = 50  # candidates per list (docs/design.md §1)
    request_history: int = 50  # L: most recent clicks sent with a request (docs/design.md §3)
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
        if bool(self.srm_dir) == bool(self.bundle_dir):
            raise ValueError("give one of srm_dir (an SRM checkpoint) or bundle_dir (a bundle)")
        if not self.bundle_dir:
            parse_policy(self.policy, self.seed)  # fail before any device starts

        build_fusion(self.fusion)

    def client_config(self):
        """The device client's config: deadlines, retries and reconnects of this fleet."""

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
