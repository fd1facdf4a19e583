"""The device client against a real server on loopback: results, retries, fallback, balancing."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from cloud.base import GeneratorBase
from cloud.server import ServerConfig, create_server
from device.client import (
    CandidateClient,
    ClientConfig,
    FetchResult,
    backoff_delay,
    channel_options,
    to_candidate_list,
)
from protos.lsc4rec.v1 import candidates_pb2 as pb
from protos.lsc4rec.v1 import candidates_pb2_grpc as pb_grpc
from shared.candidates import CandidateList

REPO_ROOT = Path(__file__).resolve().parents[2]
N = 10  # candidates per request here: the tiny catalogue has 120 items
TIMEOUT = 30.0  # generous deadline for calls that must succeed on a busy machine


@pytest.fixture(scope="module")
def generator(served_generator) -> GeneratorBase:
    return served_generator


class CountingGenerator:
    """Wraps a generator; counts requests and can hold a batch until released."""

    def __init__(self, inner: GeneratorBase) -> None:
        self.inner = inner
        self.num_items = inner.num_items
        self.model_version = inner.model_version
        self.requests = 0
        self.release = threading.Event()
        self.release.set()

    def generate(self, histories, n=50, exclude=None):
        self.requests += len(histories)
        assert self.release.wait(TIMEOUT), "the test never released the batch"
        return self.inner.generate(histories, n=n, exclude=exclude)


@pytest.fixture
def servers():
    """Factory: start a server (port 0 unless given); all are stopped at teardown."""
    started = []

    def start(generator, config: ServerConfig | None = None, port: int = 0):
        config = config or ServerConfig(default_n=N, grace_s=5.0)
        server, bound = create_server(generator, f"127.0.0.1:{port}", config)
        started.append(server)
        return server, bound

    yield start
    for server in started:
        server.shutdown(grace_s=0)


@pytest.fixture
def clients():
    """Factory: a client for a config; all are closed at teardown."""
    made = []

    def make(config: ClientConfig, **options) -> CandidateClient:
        client = CandidateClient(config, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_valid(candidates: CandidateList, history, n: int = N) -> None:
    assert candidates.items.dtype == np.int64 and candidates.scores.dtype == np.float32
    assert len(candidates) == n == len(set(candidates.items.tolist()))
    assert candidates.items.min() >= 1 and candidates.items.max() <= 120
    assert not set(candidates.items.tolist()) & set(history)


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# --------------------------------------------------------------------------- success


def test_fetch_returns_a_candidate_list(servers, clients, generator):
    _, port = servers(generator)
    client = clients(ClientConfig(target=f"127.0.0.1:{port}", timeout_s=TIMEOUT))
    result = client.fetch(np.array([3, 9, 27]), request_id="abc")
    assert result.ok and result.status == grpc.StatusCode.OK and result.attempts == 1
    assert_valid(result.candidates, [3, 9, 27])
    assert result.candidates.model_version == generator.model_version
    assert result.latency_s > 0 and result.server_timing.batch_size >= 1


def test_fetch_batch_returns_lists_in_order(servers, clients, generator):
    _, port = servers(generator)
    client = clients(ClientConfig(target=f"127.0.0.1:{port}", timeout_s=TIMEOUT))
    histories = [[1, 2], [50], [7, 8, 9]]
    result = client.fetch_batch(histories, n=5)
    assert result.ok and len(result.candidates) == 3
    for history, candidates in zip(histories, result.candidates):
        assert_valid(candidates, history, n=5)


# --------------------------------------------------------------------------- failures


def test_unreachable_server_is_retried_with_backoff_then_reported(clients):
    sleeps: list[float] = []
    config = ClientConfig(
        target=f"127.0.0.1:{free_port()}",
        max_attempts=4,
        initial_backoff_s=0.01,
        max_backoff_s=0.02,
        total_timeout_s=TIMEOUT,
    )
    client = clients(config, sleep=sleeps.append, rng=random.Random(0))
    result = client.fetch([1, 2])
    assert not result.ok and result.candidates is None
    assert result.status == grpc.StatusCode.UNAVAILABLE
    assert result.attempts == 4
    assert len(sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(sleeps, (0.01, 0.02, 0.02)))


class CancelsFirstCalls(pb_grpc.CandidateServiceServicer):
    """A server that answers CANCELLED to its first calls, as one shutting down may."""

    def __init__(self, cancelled: int) -> None:
        self.cancelled, self.calls = cancelled, 0

    def GetCandidates(self, request, context):  # noqa: N802 (rpc name)
        self.calls += 1
        if self.calls <= self.cancelled:
            context.abort(grpc.StatusCode.CANCELLED, "call cancelled by the server")
        return pb.GetCandidatesResponse(items=[7, 8], scores=[-1.0, -2.0], model_version="v")


def test_cancelled_by_the_server_is_retried_like_unavailable(clients):
    servicer = CancelsFirstCalls(cancelled=2)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_CandidateServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = clients(ClientConfig(target=f"127.0.0.1:{port}", timeout_s=TIMEOUT,
                                      total_timeout_s=TIMEOUT, health_check=False))  # fmt: skip
        result = client.fetch([1, 2], n=2)
        assert result.ok and result.attempts == 3 and servicer.calls == 3
        assert result.candidates.items.tolist() == [7, 8]
    finally:
        server.stop(0)


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap():
    class Top(random.Random):
        def uniform(self, a, b):  # the largest delay jitter allows
            return b

    config = ClientConfig(initial_backoff_s=0.05, max_backoff_s=0.3, backoff_multiplier=2.0)
    caps = [backoff_delay(a, config, Top()) for a in range(1, 6)]
    assert caps == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3])
    rng = random.Random(1)
    delays = [backoff_delay(3, config, rng) for _ in range(200)]
    assert 0 <= min(delays) < 0.05 and 0.15 < max(delays) <= 0.2  # spread over [0, cap]


def test_invalid_argument_is_not_retried(servers, clients, generator):
    _, port = servers(generator)
    sleeps: list[float] = []
    client = clients(
        ClientConfig(target=f"127.0.0.1:{port}", timeout_s=TIMEOUT), sleep=sleeps.append
    )
    result = client.fetch([])
    assert (result.ok, result.status, result.attempts) == (
        False,
        grpc.StatusCode.INVALID_ARGUMENT,
        1,
    )
    assert "history is empty" in result.message and sleeps == []


def test_deadline_is_set_on_every_call(servers, clients, generator):
    held = CountingGenerator(generator)
    held.release.clear()
    _, port = servers(held)
    client = clients(ClientConfig(target=f"127.0.0.1:{port}", timeout_s=0.2, max_attempts=3))
    try:
        result = client.fetch([1, 2])
    finally:
        held.release.set()
    assert not result.ok and result.status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert result.attempts == 1  # only UNAVAILABLE is retried by default


def test_total_budget_bounds_a_fetch_with_retries(clients):
    config = ClientConfig(
        target=f"127.0.0.1:{free_port()}",
        max_attempts=1000,
        initial_backoff_s=0.05,
        max_backoff_s=0.05,
        total_timeout_s=1.0,
    )
    client = clients(config, rng=random.Random(0))
    result = client.fetch([1])
    # The last attempt may be cut short by the budget: then its deadline is what failed.
    assert not result.ok
    assert result.status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert 1 < result.attempts < 1000 and result.latency_s < 5.0


def test_token_is_sent_when_configured(servers, clients, generator):
    _, port = servers(generator, ServerConfig(default_n=N, auth_token="s3cret"))
    target = f"127.0.0.1:{port}"
    without = clients(ClientConfig(target=target, timeout_s=TIMEOUT)).fetch([1])
    assert without.status == grpc.StatusCode.UNAUTHENTICATED and without.attempts == 1
    wrong = clients(ClientConfig(target=target, timeout_s=TIMEOUT, token="guess")).fetch([1])
    assert wrong.status == grpc.StatusCode.UNAUTHENTICATED
    right = clients(ClientConfig(target=target, timeout_s=TIMEOUT, token="s3cret")).fetch([1])
    assert right.ok


# --------------------------------------------------------------------------- fallback, restart


def test_device_loop_falls_back_while_the_server_is_down_and_recovers_after_restart(
    servers, clients, generator
):
    server, port = servers(generator)
    config = ClientConfig(
        target=f"127.0.0.1:{port}",
        timeout_s=TIMEOUT,
        total_timeout_s=TIMEOUT,
        max_attempts=2,
        initial_backoff_s=0.01,
        max_backoff_s=0.05,
        max_reconnect_backoff_s=0.1,  # reconnect quickly once the server is back
    )
    client = clients(config)
    results: list[tuple[str, FetchResult]] = []
    phase = ["before"]
    stop = threading.Event()

    def device_loop() -> None:
        cached = None
        while not stop.is_set():
            result = client.fetch([1, 2, 3])
            if result.ok:
                cached = result.candidates  # a failure keeps the cached list
            assert cached is not None
            results.append((phase[0], result))
            time.sleep(0.005)

    loop = threading.Thread(target=device_loop)
    loop.start()
    try:
        wait_until(lambda: sum(r.ok for _, r in results) >= 3)
        phase[0] = "down"
        server.shutdown(grace_s=5.0)  # in-flight calls finish; new ones are refused
        wait_until(lambda: any(p == "down" and not r.ok for p, r in results))
        servers(generator, port=port)  # a new server on the same port
        phase[0] = "after"
        wait_until(lambda: any(p == "after" and r.ok for p, r in results))
    finally:
        stop.set()
        loop.join(TIMEOUT)
    assert not loop.is_alive()  # the loop never raised or hung
    failures = {r.status for _, r in results if not r.ok}
    assert failures == {grpc.StatusCode.UNAVAILABLE}
    assert all(r.candidates is None for _, r in results if not r.ok)


# --------------------------------------------------------------------------- balancing, TLS


def test_round_robin_spreads_calls_over_replicas(servers, clients, generator):
    replicas = [CountingGenerator(generator), CountingGenerator(generator)]
    ports = [servers(replica)[1] for replica in replicas]
    # ipv4: lists several addresses, as DNS would for a name with several A records.
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    client = clients(ClientConfig(target=target, timeout_s=TIMEOUT))
    for _ in range(200):  # connections come up one by one: stop once both took calls
        assert client.fetch([4, 5]).ok
        if all(replica.requests for replica in replicas):
            break
    assert all(replica.requests for replica in replicas)


def test_round_robin_skips_replicas_that_are_not_serving(servers, clients, generator):
    loading, _ = servers(None)  # health NOT_SERVING: its calls would fail UNAVAILABLE
    serving = CountingGenerator(generator)
    ports = [loading.port, servers(serving)[1]]
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    client = clients(ClientConfig(target=target, timeout_s=TIMEOUT, max_attempts=1))
    results = [client.fetch([4, 5]) for _ in range(20)]
    assert all(r.ok for r in results), {r.status for r in results}
    assert serving.requests == 20


def test_dns_target_resolves_and_uses_round_robin(servers, clients, generator):
    _, port = servers(generator)
    config = ClientConfig(target=f"dns:///127.0.0.1:{port}", timeout_s=TIMEOUT)
    options = dict(channel_options(config))
    assert json.loads(options["grpc.service_config"])["loadBalancingConfig"] == [
        {"round_robin": {}}
    ]
    assert clients(config).fetch([4, 5]).ok


def test_tls_with_a_root_certificate(servers, clients, generator, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=cloud.test", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:cloud.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_config = ServerConfig(default_n=N, tls_cert_file=str(cert), tls_key_file=str(key))
    _, port = servers(generator, server_config)
    config = ClientConfig(
        target=f"127.0.0.1:{port}",
        timeout_s=TIMEOUT,
        root_cert_file=str(cert),
        tls_server_name="cloud.test",  # the certificate's name, not the address dialled
    )
    assert clients(config).fetch([1, 2]).ok


def test_missing_root_certificate_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="root certificate"):
        CandidateClient(ClientConfig(root_cert_file=str(tmp_path / "none.pem")))


# --------------------------------------------------------------------------- pieces


def test_malformed_response_is_rejected():
    response = pb.GetCandidatesResponse(items=[1, 2, 3], scores=[-0.1, -0.2])
    with pytest.raises(ValueError, match="equal length"):
        to_candidate_list(response)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": ""}, "target"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"initial_backoff_s": 2.0, "max_backoff_s": 1.0}, "initial_backoff_s"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
        ({"load_balancing": "random"}, "load_balancing"),
        ({"token": ""}, "token"),
    ],
)
def test_client_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        ClientConfig(**options)


def test_client_module_never_imports_torch_or_transformers():
    code = (
        "import sys, device.client; "
        "heavy = [m for m in ('torch', 'transformers', 'cloud') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
