"""The device's gRPC client for fresh candidate lists; failures come back as values.

    client = CandidateClient(ClientConfig(target="dns:///cloud.example.org:50051"))
    result = client.fetch(history[-50:], n=50, exclude=history[:-50])
    if result.ok:
        cached = result.candidates          # a CandidateList
    # else: keep reranking the cached list; result.status says why (UNAVAILABLE, ...)

Every attempt carries a deadline, and the whole fetch (retries included) has a budget, so a
device never waits on the cloud for long. UNAVAILABLE (server down, draining, unreachable)
is retried with exponential backoff and full jitter, so a fleet of devices does not retry
in lock-step; other failures return at once (retrying INVALID_ARGUMENT cannot help, and
retrying RESOURCE_EXHAUSTED adds load to an overloaded server).

Imports only grpc, numpy, the generated protos and `shared`: a device process starts fast
and never loads torch or transformers.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from protos.lsc4rec.v1 import candidates_pb2 as pb
from protos.lsc4rec.v1 import candidates_pb2_grpc as pb_grpc
from shared.candidates import CandidateList

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CandidateService"].full_name


@dataclass
class ClientConfig:
    """Where the cloud is, how long to wait for it, and how to retry."""

    target: str = "localhost:50051"  # host:port, or dns:///host:port to spread over every replica
    timeout_s: float = 0.5  # deadline per attempt; the cloud answers in tens of ms when healthy
    total_timeout_s: float = 2.0  # budget of one fetch, retries and backoff included
    max_attempts: int = 3  # attempts per fetch (1 = no retry)
    initial_backoff_s: float = 0.05  # first backoff before jitter
    max_backoff_s: float = 1.0  # backoff cap: a device retries later anyway (the next click)
    backoff_multiplier: float = 2.0  # growth per attempt
    # Transient only. The client never cancels its own calls, so a CANCELLED it sees came from
    # the other side (a call that reached a server as it shut down): as good as UNAVAILABLE.
    retry_codes: tuple[grpc.StatusCode, ...] = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    )
    load_balancing: str = "round_robin"  # spread calls over every resolved replica
    health_check: bool = True  # round_robin skips replicas whose health is not SERVING
    token: str | None = field(default=None, repr=False)  # bearer token, when the server wants one
    root_cert_file: str | None = None  # PEM roots to verify the server: turns TLS on
    tls_server_name: str | None = None  # expected certificate name if it differs from the host
    keepalive_time_s: float = 30.0  # ping a quiet connection this often during calls
    keepalive_timeout_s: float = 10.0  # and drop it if the ping is not answered in time
    keepalive_without_calls: bool = False  # idle pings cost a phone's battery; off by default
    max_reconnect_backoff_s: float = (
        5.0  # gRPC's 120 s default keeps a device off a restarted server
    )
    max_message_bytes: int = 4 * 1024 * 1024  # matches the server's limit

    def __post_init__(self) -> None:
        self.retry_codes = tuple(self.retry_codes)
        if not self.target:
            raise ValueError("target must not be empty")
        for name in ("timeout_s", "total_timeout_s", "keepalive_time_s", "keepalive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"need 0 < initial_backoff_s <= max_backoff_s, got {self.initial_backoff_s}, "
                f"{self.max_backoff_s}"
            )
        if self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier}")
        if self.max_reconnect_backoff_s <= 0:
            raise ValueError(
                f"max_reconnect_backoff_s must be > 0, got {self.max_reconnect_backoff_s}"
            )
        if self.load_balancing not in ("round_robin", "pick_first"):
            raise ValueError(
                f"load_balancing must be round_robin or pick_first, got {self.load_balancing!r}"
            )
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty (use None for no token)")


@dataclass(frozen=True)
class ServerTiming:
    """The server's account of one request, in microseconds (see the proto)."""

    queue_us: int
    compute_us: int
    total_us: int
    batch_size: int


@dataclass(frozen=True)
class FetchResult:
    """The outcome of one fetch. On failure the device keeps its cached list.

    Attributes:
        ok: a valid candidate list arrived.
        candidates: the list when ok, else None.
        status: the final gRPC status (OK on success).
        attempts: calls made (1 + retries).
        latency_s: wall time of the whole fetch, backoff included.
        message: the server's or the client's explanation when not ok.
        server_timing: the server's timing when ok.
    """

    ok: bool
    candidates: CandidateList | None
    status: grpc.StatusCode
    attempts: int
    latency_s: float
    message: str = ""
    server_timing: ServerTiming | None = None


@dataclass(frozen=True)
class BatchFetchResult:
    """The outcome of one batch fetch; `candidates` in request order when ok."""

    ok: bool
    candidates: list[CandidateList] | None
    status: grpc.StatusCode
    attempts: int
    latency_s: float
    message: str = ""


def service_config(config: ClientConfig) -> str:
    """The channel's gRPC service config (JSON): load balancing and client-side health checks.

    With health checking, round_robin sends calls only to replicas whose health service says
    SERVING for `lsc4rec.v1.CandidateService`: one that is loading its model or draining
    before shutdown gets no traffic.
    """
    service: dict = {"loadBalancingConfig": [{config.load_balancing: {}}]}
    if config.health_check:
        service["healthCheckConfig"] = {"serviceName": SERVICE_NAME}
    return json.dumps(service)


def channel_options(config: ClientConfig) -> list[tuple[str, object]]:
    """gRPC channel arguments: load balancing, keepalive, reconnect backoff, message sizes."""
    reconnect_ms = int(config.max_reconnect_backoff_s * 1000)
    return [
        ("grpc.service_config", service_config(config)),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", int(config.keepalive_without_calls)),
        ("grpc.initial_reconnect_backoff_ms", min(1000, reconnect_ms)),
        ("grpc.min_reconnect_backoff_ms", min(1000, reconnect_ms)),
        ("grpc.max_reconnect_backoff_ms", reconnect_ms),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]


def build_channel(config: ClientConfig) -> grpc.Channel:
    """A channel to `config.target`: TLS when a root certificate is given, else plain.

    Raises:
        FileNotFoundError: the root certificate file is missing.
    """
    options = channel_options(config)
    if config.root_cert_file is None:
        return grpc.insecure_channel(config.target, options=options)
    cert = Path(config.root_cert_file)
    if not cert.is_file():
        raise FileNotFoundError(f"root certificate not found: {config.root_cert_file}")
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    return grpc.secure_channel(config.target, credentials, options=options)


def backoff_delay(attempt: int, config: ClientConfig, rng: random.Random) -> float:
    """Seconds to sleep after failed attempt `attempt` (1-based): full jitter.

    Uniform in [0, min(max_backoff, initial * multiplier**(attempt-1))], so a fleet of
    devices that lost the server together does not come back together.
    """
    cap = min(
        config.max_backoff_s, config.initial_backoff_s * config.backoff_multiplier ** (attempt - 1)
    )
    return rng.uniform(0.0, cap)


class CandidateClient:
    """Fetches candidate lists from the cloud with deadlines and retries.

    Args:
        config: target, deadlines, retries, security.
        sleep: how to wait between attempts (tests pass a recorder).
        rng: the jitter's random source (seed it for reproducible backoff).
        clock: monotonic seconds.
    Raises:
        FileNotFoundError: the root certificate file is missing.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or ClientConfig()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._channel = build_channel(self.config)
        self._stub = pb_grpc.CandidateServiceStub(self._channel)
        self._metadata = (
            (("authorization", f"Bearer {self.config.token}"),) if self.config.token else None
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CandidateClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fetch(
        self,
        history: Sequence[int],
        n: int = 0,
        user_id: str = "",
        request_id: str = "",
        exclude: Sequence[int] = (),
    ) -> FetchResult:
        """A fresh candidate list for `history`; never raises for server or network failures.

        Args:
            history: recent item ids, oldest first (send the last L, e.g. 50).
            n: candidates wanted (0 = the server's default, 50).
            user_id: passed along for the caller's bookkeeping; the server keeps nothing.
            request_id: echoed by the server and written to its logs.
            exclude: the user's other consumed items (older than `history`): the list holds
                none of them, so all n candidates are items the user has not consumed.
        Returns:
            a `FetchResult`; when not ok, keep using the cached list.
        """
        request = pb.GetCandidatesRequest(
            user_id=user_id,
            history=_ids(history),
            n=n,
            request_id=request_id,
            exclude=_ids(exclude),
        )
        started = self._clock()
        response, status, attempts, message = self._call(self._stub.GetCandidates, request)
        latency = self._clock() - started
        if response is None:
            return FetchResult(False, None, status, attempts, latency, message)
        try:
            candidates = to_candidate_list(response)
        except ValueError as err:
            return FetchResult(False, None, grpc.StatusCode.INTERNAL, attempts, latency, str(err))
        timing = ServerTiming(
            response.timing.queue_us,
            response.timing.compute_us,
            response.timing.total_us,
            response.timing.batch_size,
        )
        return FetchResult(True, candidates, status, attempts, latency, "", timing)

    def fetch_batch(
        self,
        histories: Sequence[Sequence[int]],
        n: int = 0,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> BatchFetchResult:
        """Candidate lists for many histories in one call (experiments, replays).

        Args:
            histories: one history per request.
            n: candidates per request (0 = the server's default).
            exclude: per request, the items to exclude beyond its history (None = none).
        Returns:
            a `BatchFetchResult` with the lists in request order when ok.
        """
        extra = [()] * len(histories) if exclude is None else exclude
        request = pb.GetCandidatesBatchRequest(
            requests=[
                pb.GetCandidatesRequest(history=_ids(h), n=n, exclude=_ids(e))
                for h, e in zip(histories, extra, strict=True)
            ]
        )
        started = self._clock()
        response, status, attempts, message = self._call(self._stub.GetCandidatesBatch, request)
        latency = self._clock() - started
        if response is None:
            return BatchFetchResult(False, None, status, attempts, latency, message)
        try:
            lists = [to_candidate_list(r) for r in response.responses]
        except ValueError as err:
            return BatchFetchResult(
                False, None, grpc.StatusCode.INTERNAL, attempts, latency, str(err)
            )
        return BatchFetchResult(True, lists, status, attempts, latency)

    def _call(self, method, request):
        """Attempts until success, a non-retryable status, the attempt limit or the budget.

        Returns:
            (response or None, final status, attempts made, message).
        """
        budget_end = self._clock() + self.config.total_timeout_s
        attempt = 0
        while True:
            attempt += 1
            timeout = min(self.config.timeout_s, budget_end - self._clock())
            try:
                response = method(request, timeout=timeout, metadata=self._metadata)
                return response, grpc.StatusCode.OK, attempt, ""
            except grpc.RpcError as err:
                code, message = err.code(), err.details() or ""
            if code not in self.config.retry_codes or attempt >= self.config.max_attempts:
                return None, code, attempt, message
            delay = backoff_delay(attempt, self.config, self._rng)
            if self._clock() + delay >= budget_end:
                return None, code, attempt, f"{message} (retry budget spent)"
            self._sleep(delay)


def _ids(history: Sequence[int]) -> list[int]:
    return np.asarray(history, dtype=np.int64).reshape(-1).tolist()


def to_candidate_list(response: pb.GetCandidatesResponse) -> CandidateList:
    """The response's items and scores as a `CandidateList`.

    Raises:
        ValueError: items and scores differ in length (a malformed response).
    """
    return CandidateList(
        items=np.array(response.items, dtype=np.int64),
        scores=np.array(response.scores, dtype=np.float32),
        model_version=response.model_version,
    )
