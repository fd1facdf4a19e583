"""The cloud gRPC server: lifecycle, health, reflection, auth, TLS, graceful shutdown.

    server, port = create_server(generator, "127.0.0.1:0", ServerConfig())   # started
    ...
    server.shutdown()            # health NOT_SERVING -> stop taking calls -> finish in-flight

    serve("runs/llm", "[::]:50051", ServerConfig())   # blocks until SIGTERM/SIGINT

`serve` starts listening before the model is loaded, with health NOT_SERVING (calls get
UNAVAILABLE), so orchestrators see the process come up and wait for SERVING. On SIGTERM or
SIGINT it turns health NOT_SERVING, keeps answering for `drain_s` while clients move away,
then stops taking new calls and gives in-flight ones `grace_s` to finish. The server keeps no
per-user state, so replicas can be added behind a load balancer freely (docs/grpc.md).
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud.auth import BearerTokenInterceptor
from cloud.guards import DataCallLimiter, MalformedRequestGuard
from cloud.servicer import CandidateServicer, CandidateSource, RequestLimits
from protos.lsc4rec.v1 import candidates_pb2 as pb
from protos.lsc4rec.v1 import candidates_pb2_grpc as pb_grpc

logger = logging.getLogger("lsc4rec.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CandidateService"].full_name
# Threads beyond the queue for health checks, reflection and calls being refused.
EXTRA_HANDLER_THREADS = 16


@dataclass
class ServerConfig:
    """How the server batches, what it accepts, and how it is secured and stopped."""

    max_batch_size: int = 32  # requests per model call; 1 turns micro-batching off
    max_wait_ms: float = 2.0  # longest wait for a batch to fill; small next to a ~30 ms model call
    max_queue_size: int = 256  # waiting requests beyond this get RESOURCE_EXHAUSTED, not latency
    default_n: int = 50  # candidates when a request says n = 0 (docs/design.md §1: N = 50)
    max_n: int = 500  # beam search cost grows with n; bounds one request's compute
    max_history_items: int = 1000  # the model reads only the last few; longer is a client bug
    max_exclude_items: int = 10_000  # ids excluded beyond the history (a user's older clicks)
    max_batch_requests: int = 256  # most requests in one GetCandidatesBatch call
    max_message_bytes: int = 4 * 1024 * 1024  # gRPC's usual 4 MiB; a full batch call fits
    auth_token: str | None = field(default=None, repr=False)  # bearer token; None = auth off
    tls_cert_file: str | None = None  # PEM certificate chain; with tls_key_file turns TLS on
    tls_key_file: str | None = None  # PEM private key of the certificate
    grace_s: float = 10.0  # in-flight calls get this long to finish on shutdown
    drain_s: float = 0.0  # health NOT_SERVING this long before calls stop being taken
    max_connection_age_s: float = (
        300.0  # clients reconnect (and re-resolve DNS) this often; 0 = never
    )

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue_size", "default_n", "max_n"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(self.max_history_items >= 1, "max_history_items", "must be >= 1")
        _require(self.max_exclude_items >= 0, "max_exclude_items", "must be >= 0")
        _require(self.max_batch_requests >= 1, "max_batch_requests", "must be >= 1")
        _require(self.max_wait_ms >= 0, "max_wait_ms", "must be >= 0")
        _require(self.default_n <= self.max_n, "default_n", f"must be <= max_n ({self.max_n})")
        _require(
            self.max_batch_requests <= self.max_queue_size,
            "max_batch_requests",
            f"must be <= max_queue_size ({self.max_queue_size}), or a full batch never fits",
        )
        _require(self.max_message_bytes >= 1024, "max_message_bytes", "must be >= 1024")
        _require(self.grace_s >= 0, "grace_s", "must be >= 0")
        _require(self.drain_s >= 0, "drain_s", "must be >= 0")
        _require(self.max_connection_age_s >= 0, "max_connection_age_s", "must be >= 0")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token must not be empty (use None to turn auth off)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file, or neither")

    def request_limits(self) -> RequestLimits:
        return RequestLimits(
            default_n=self.default_n,
            max_n=self.max_n,
            max_history_items=self.max_history_items,
            max_exclude_items=self.max_exclude_items,
            max_batch_requests=self.max_batch_requests,
        )

    @property
    def max_data_calls(self) -> int:
        """Concurrent data calls: each queued or computing call holds a handler thread."""
        return self.max_queue_size + self.max_batch_size

    @property
    def handler_threads(self) -> int:
        """Data calls plus a reserve that health checks and reflection always find free."""
        return self.max_data_calls + EXTRA_HANDLER_THREADS


def _require(ok: bool, name: str, rule: str) -> None:
    if not ok:
        raise ValueError(f"ServerConfig.{name} {rule}")


class CandidateServer:
    """A started gRPC server with its servicer, micro-batcher and health service.

    Attributes:
        port: the bound port (the real one when the address asked for port 0).
        servicer: the `CandidateService` implementation.
        health: the `grpc.health.v1.Health` servicer.
    """

    def __init__(
        self,
        grpc_server: grpc.Server,
        servicer: CandidateServicer,
        health_servicer: HealthServicer,
        config: ServerConfig,
        port: int,
    ) -> None:
        self.grpc_server = grpc_server
        self.servicer = servicer
        self.health = health_servicer
        self.config = config
        self.port = port
        self._shutdown_lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def queue_depth(self) -> int:
        """Requests waiting in the micro-batching queue."""
        return self.servicer.batcher.queue_depth

    def set_generator(self, generator: CandidateSource) -> None:
        """Serve with `generator` and report SERVING."""
        self.servicer.set_generator(generator)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "serving",
            extra={"port": self.port, "model_version": generator.model_version},
        )

    def shutdown(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, drain, stop taking calls, finish in-flight ones.

        Args:
            grace_s: seconds in-flight calls get (default `config.grace_s`); then they are
                cancelled. Safe to call twice: the second call waits for the first.
        """
        grace = self.config.grace_s if grace_s is None else grace_s
        with self._shutdown_lock:
            if self._stopped.is_set():
                return
            logger.info("shutting down", extra={"drain_s": self.config.drain_s, "grace_s": grace})
            self.health.enter_graceful_shutdown()  # NOT_SERVING for every service, for good
            if self.config.drain_s:
                time.sleep(self.config.drain_s)  # clients see NOT_SERVING and move away
            # New calls are refused from here on; accepted ones finish within the grace (the
            # batcher keeps computing meanwhile).
            stopped = self.grpc_server.stop(grace)
            # Health Watch streams (clients' health checks) never end by themselves and would
            # hold the server for the whole grace: end them, NOT_SERVING already sent.
            self.health.end_watches()
            stopped.wait()
            self.servicer.batcher.close(drain=False)
            self._stopped.set()
            logger.info("stopped", extra=_batcher_counts(self.servicer))

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until `shutdown` finished; returns False on timeout."""
        return self._stopped.wait(timeout)

    def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):  # "" = the server as a whole
            self.health.set(name, status)


def _batcher_counts(servicer: CandidateServicer) -> dict:
    stats = servicer.batcher.stats
    return {
        "batches": stats.batches,
        "computed": stats.computed,
        "expired": stats.expired,
        "cancelled": stats.cancelled,
        "rejected": stats.rejected,
        "largest_batch": stats.largest_batch,
    }


def create_server(
    generator: CandidateSource | None,
    address: str = "[::]:50051",
    config: ServerConfig | None = None,
) -> tuple[CandidateServer, int]:
    """Build, bind and start a server.

    Args:
        generator: the model to serve; None = not loaded yet (health NOT_SERVING, calls get
            UNAVAILABLE until `server.set_generator`).
        address: `host:port` to bind; port 0 picks a free port.
        config: server settings (default `ServerConfig()`).
    Returns:
        the started server and its bound port.
    Raises:
        FileNotFoundError: a TLS file is missing.
        ValueError: the TLS key does not match the certificate, or a bad address.
        BindError: the address cannot be listened on (the message says why).
    """
    config = config or ServerConfig()
    servicer = CandidateServicer(
        config.request_limits(),
        max_batch_size=config.max_batch_size,
        max_wait_s=config.max_wait_ms / 1000,
        max_queue_size=config.max_queue_size,
    )
    grpc_server = grpc.server(
        ThreadPoolExecutor(max_workers=config.handler_threads, thread_name_prefix="grpc-handler"),
        interceptors=interceptors(config),
        options=server_options(config),
    )
    pb_grpc.add_CandidateServiceServicer_to_server(servicer, grpc_server)
    health_servicer = _add_health(grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
        grpc_server,
        pool=MethodAwarePool(descriptor_pool.Default()),
    )
    port = _bind(grpc_server, address, config)
    server = CandidateServer(grpc_server, servicer, health_servicer, config, port)
    server._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer.batcher.start()
    grpc_server.start()
    logger.info("listening", extra={"address": address, "port": port, "tls": _tls_on(config)})
    if generator is not None:
        server.set_generator(generator)
    return server, port


def interceptors(config: ServerConfig) -> list[grpc.ServerInterceptor]:
    """Auth first (a refused call counts against nothing), then the data-call limit (health
    and reflection are never counted), then the guard that turns unparsable requests into
    INVALID_ARGUMENT."""
    chain: list[grpc.ServerInterceptor] = []
    if config.auth_token:
        chain.append(BearerTokenInterceptor(config.auth_token))
    chain.append(DataCallLimiter(config.max_data_calls, f"/{SERVICE_NAME}/"))
    chain.append(MalformedRequestGuard())
    return chain


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC channel arguments of the server."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # A port in use must fail loudly, not be shared silently with another process.
        ("grpc.so_reuseport", 0),
        # Accept client keepalive pings (devices send one every 30 s on an open call).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]
    if config.max_connection_age_s:
        age_ms = int(config.max_connection_age_s * 1000)
        options += [
            ("grpc.max_connection_age_ms", age_ms),
            ("grpc.max_connection_age_grace_ms", int(config.grace_s * 1000)),
        ]
    return options


class MethodAwarePool:
    """A descriptor pool that also finds the file of an rpc method's name, for reflection.

    The upb protobuf runtime's `FindFileContainingSymbol` knows services but not their
    methods, so `grpcurl describe lsc4rec.v1.CandidateService.GetCandidates` would fail;
    a method's file is its service's file.
    """

    def __init__(self, pool) -> None:
        self._pool = pool

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str):  # noqa: N802 (the pool's method name)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            parent, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(parent)  # KeyError: not a method either
            if method not in service.methods_by_name:
                raise
            return service.file


class HealthServicer(health.HealthServicer):
    """The standard health service, plus a way to end every open Watch stream at shutdown."""

    def __init__(self) -> None:
        # Non-blocking: a Watch stream does not hold a handler thread while it waits.
        super().__init__(
            experimental_non_blocking=True,
            experimental_thread_pool=ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
        )
        self._watches: set = set()
        self._watches_lock = threading.Lock()

    def Watch(self, request, context, send_response_callback=None):  # noqa: N802 (rpc name)
        if send_response_callback is None:  # a blocking server: nothing to track
            return super().Watch(request, context)
        stream = _WatchStream(send_response_callback)
        with self._watches_lock:
            self._watches.add(stream)
        context.add_callback(lambda: self._forget(stream))
        return super().Watch(request, context, stream)

    def _forget(self, stream: _WatchStream) -> None:
        with self._watches_lock:
            self._watches.discard(stream)

    def end_watches(self) -> None:
        """End every open Watch stream with status OK."""
        with self._watches_lock:
            streams, self._watches = list(self._watches), set()
        for stream in streams:
            stream(None)


class _WatchStream:
    """A Watch stream's send callback (None ends the stream) that ends the stream only once.

    The base servicer also ends a stream when its call closes; sending a second status on
    an ended call would fail.
    """

    def __init__(self, send) -> None:
        self._send = send
        self._ended = False
        self._lock = threading.Lock()

    def __call__(self, response) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = response is None
        self._send(response)


def _add_health(grpc_server: grpc.Server) -> HealthServicer:
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    return servicer


def _tls_on(config: ServerConfig) -> bool:
    return config.tls_cert_file is not None


class BindError(OSError):
    """The server cannot listen where it was asked to (the message says why, in one line)."""


def _bind(grpc_server: grpc.Server, address: str, config: ServerConfig) -> int:
    # gRPC's own bind failure is "Failed to bind" for every cause (a taken port, an address
    # of another machine, a key that does not match its certificate), written by the C core
    # to stderr: find the cause first and say it.
    check_bindable(address)
    if _tls_on(config):
        key, cert = _read(config.tls_key_file), _read(config.tls_cert_file)
        check_tls_pair(config.tls_cert_file, config.tls_key_file)
        port = grpc_server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = grpc_server.add_insecure_port(address)
    if not port:
        raise BindError(f"could not bind {address}")
    return port


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as (host, port).

    Raises:
        ValueError: no port, or a port that is not a number in 0..65535.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r} is not host:port with a port in 0..65535")
    return host.strip("[]"), int(port_text)


def check_bindable(address: str) -> None:
    """Raise BindError saying why `address` cannot be listened on, if it cannot: a host that
    does not resolve, an address that is not this machine's, a port already in use, or a
    privileged port. Port 0 (any free port) is always bindable."""
    host, port = split_address(address)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)  # fmt: skip
        if host in ("", "::"):  # gRPC falls back to 0.0.0.0 where IPv6 is off
            infos += socket.getaddrinfo("0.0.0.0", port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise BindError(
            f"cannot listen on {address}: host {host!r} does not resolve ({err.strerror})"
        ) from None
    # gRPC listens on every address the host resolves to that it can bind; it fails only
    # when none binds (localhost without IPv6 is fine).
    errors = [_try_bind(info) for info in infos]
    if all(errors):
        taken = [err for err in errors if err.errno == errno.EADDRINUSE]
        reason = _bind_reason((taken or errors)[0], host, port)
        raise BindError(f"cannot listen on {address}: {reason}")


def _try_bind(info: tuple) -> OSError | None:
    family, kind, proto, _, sockaddr = info
    try:
        with socket.socket(family, kind, proto) as probe:  # fails where IPv6 is off
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(sockaddr)
    except OSError as err:
        return err
    return None


def _bind_reason(err: OSError, host: str, port: int) -> str:
    if err.errno == errno.EADDRINUSE:
        return f"port {port} is already in use"
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    if err.errno == errno.EACCES:
        return f"no permission to use port {port} (ports below 1024 need privileges)"
    return err.strerror or str(err)


def check_tls_pair(cert_file: str | None, key_file: str | None) -> None:
    """Raise ValueError when the key is not the certificate's, or either is not PEM."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that gives none: an encrypted key fails instead of prompting.
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as err:
        if "KEY_VALUES_MISMATCH" in str(err) or "key values mismatch" in str(err):
            raise ValueError(
                f"TLS key {key_file} does not match the certificate {cert_file}"
            ) from None
        raise ValueError(
            f"TLS files {cert_file} and {key_file} are not a PEM certificate and its "
            f"unencrypted key ({err.reason or err})"
        ) from None


def _read(path: str | None) -> bytes:
    file = Path(path or "")
    if not file.is_file():
        raise FileNotFoundError(f"TLS file not found: {path}")
    return file.read_bytes()


def serve(
    model_dir: str | Path,
    address: str = "[::]:50051",
    config: ServerConfig | None = None,
    load: Callable[[str | Path], CandidateSource] | None = None,
    device: str = "cpu",
) -> int:
    """Check the model folder, listen, load the model, serve until SIGTERM/SIGINT, then shut
    down gracefully.

    Args:
        model_dir: a generator folder written by `save_pretrained`.
        address: `host:port` to bind.
        config: server settings.
        load: loads the generator (default: `cloud.loading.check_generator` before listening,
            so that a folder that differs from its manifest is refused before anything is
            served, then `load_generator`).
        device: where the default loader puts the model: "cpu", "cuda[:N]", or "auto" (a GPU
            when torch sees one and the generator's kind can use it).
    Returns:
        0 after a clean shutdown.
    Raises:
        FileNotFoundError, ValueError: the model folder cannot be loaded (the server is
            stopped first).
        BindError: the address cannot be listened on.
    """
    if load is None:
        from transformers.utils import logging as hf_logging

        from cloud.loading import check_generator, load_generator, place_generator  # torch here

        hf_logging.disable_progress_bar()  # stderr carries JSON log lines only
        check_generator(model_dir)

        def load(folder: str | Path) -> CandidateSource:
            return place_generator(load_generator(folder, verify=False), device)  # verified

    server, _ = create_server(None, address, config)
    stop = threading.Event()
    restore = _install_signal_handlers(stop)
    try:
        generator = load(model_dir)
        if not stop.is_set():
            server.set_generator(generator)
        stop.wait()
    finally:
        server.shutdown()
        restore()
    return 0


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set `stop`; a second signal gets the default behaviour (hard stop)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals only reach the main thread; the caller stops us
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def on_signal(signum, _frame) -> None:
        logger.info("signal received", extra={"signal": signal.Signals(signum).name})
        restore()
        stop.set()

    for sig in signals:
        signal.signal(sig, on_signal)
    return restore
