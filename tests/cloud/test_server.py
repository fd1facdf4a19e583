"""The gRPC server against a real tiny generator on a loopback port (bound to port 0)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from cli.common import read_token
from cli.main import main as cli_main
from cloud.base import GeneratorBase
from cloud.server import SERVICE_NAME, ServerConfig, create_server
from cloud.servicer import CandidateRequest, run_batch
from protos.lsc4rec.v1 import candidates_pb2 as pb
from protos.lsc4rec.v1 import candidates_pb2_grpc as pb_grpc
from shared.candidates import CandidateList

REPO_ROOT = Path(__file__).resolve().parents[2]
N = 10  # candidates per request here: the tiny catalogue has 120 items
TIMEOUT = 30.0  # generous deadline for calls that must succeed on a busy machine
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def generator(served_generator) -> GeneratorBase:
    return served_generator


class GatedGenerator:
    """Wraps a generator: records what it computes and can hold a batch until released."""

    def __init__(self, inner: GeneratorBase) -> None:
        self.inner = inner
        self.num_items = inner.num_items
        self.model_version = inner.model_version
        self.seen: list[list[int]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def generate(self, histories, n=50, exclude=None):
        self.seen.extend(np.asarray(h).tolist() for h in histories)
        self.entered.set()
        assert self.release.wait(TIMEOUT), "the test never released the batch"
        return self.inner.generate(histories, n=n, exclude=exclude)


@pytest.fixture
def start_server():
    """Factory: a started server on a free loopback port, a stub and its channel."""
    started = []

    def start(generator, config: ServerConfig | None = None):
        config = config or ServerConfig(default_n=N, grace_s=5.0)
        server, port = create_server(generator, "127.0.0.1:0", config)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return server, pb_grpc.CandidateServiceStub(channel), channel

    yield start
    for server, channel in started:
        channel.close()
        server.shutdown(grace_s=0)


def req(history, n: int = 0, request_id: str = "", user_id: str = "") -> pb.GetCandidatesRequest:
    return pb.GetCandidatesRequest(history=history, n=n, request_id=request_id, user_id=user_id)


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def assert_valid(response: pb.GetCandidatesResponse, history, n: int, num_items: int) -> None:
    items = np.asarray(response.items)
    scores = np.asarray(response.scores)
    assert items.shape == scores.shape == (n,)
    assert len(set(items.tolist())) == n
    assert items.min() >= 1 and items.max() <= num_items
    assert not set(items.tolist()) & set(history)
    assert np.all(np.diff(scores) <= 0)


# --------------------------------------------------------------------------- round trips


def test_round_trip_returns_the_generators_candidates(start_server, generator):
    _, stub, _ = start_server(generator)
    history = [5, 17, 33]
    response = stub.GetCandidates(req(history, request_id="r-1"), timeout=TIMEOUT)
    assert_valid(response, history, N, generator.num_items)
    expected = generator.generate([history], n=N)[0]
    assert response.items == expected.items.tolist()
    np.testing.assert_allclose(response.scores, expected.scores, rtol=1e-6)
    assert response.model_version == generator.model_version
    assert response.request_id == "r-1"
    assert response.timing.batch_size == 1
    assert response.timing.total_us >= response.timing.compute_us > 0


def test_calls_without_a_deadline_are_served(start_server, generator):
    # Tools such as grpcurl send no deadline; gRPC then reports ~9e18 s remaining.
    _, stub, _ = start_server(generator)
    assert_valid(stub.GetCandidates(req([1, 2])), [1, 2], N, generator.num_items)
    batch = pb.GetCandidatesBatchRequest(requests=[req([3]), req([4])])
    assert len(stub.GetCandidatesBatch(batch).responses) == 2


def test_n_overrides_the_default(start_server, generator):
    _, stub, _ = start_server(generator)
    response = stub.GetCandidates(req([1, 2], n=4), timeout=TIMEOUT)
    assert_valid(response, [1, 2], 4, generator.num_items)


def test_batch_rpc_answers_every_request_in_order(start_server, generator):
    _, stub, _ = start_server(generator)
    histories = [[1, 2, 3], [40, 41], [7]]
    batch = pb.GetCandidatesBatchRequest(
        requests=[req(h, request_id=f"q{i}") for i, h in enumerate(histories)]
    )
    response = stub.GetCandidatesBatch(batch, timeout=TIMEOUT)
    assert [r.request_id for r in response.responses] == ["q0", "q1", "q2"]
    for history, answer in zip(histories, response.responses):
        assert_valid(answer, history, N, generator.num_items)


def test_the_server_keeps_no_per_user_state(start_server, generator):
    _, stub, _ = start_server(generator)
    first = stub.GetCandidates(req([9, 8, 7], user_id="alice"), timeout=TIMEOUT)
    second = stub.GetCandidates(req([9, 8, 7], user_id="bob"), timeout=TIMEOUT)
    assert first.items == second.items


# --------------------------------------------------------------------------- bad input

BAD_REQUESTS = [
    pytest.param([], 0, "history is empty", id="empty-history"),
    pytest.param([0, 3], 0, "unknown item id 0", id="padding-id"),
    pytest.param([3, 121], 0, "unknown item id 121", id="id-past-catalogue"),
    pytest.param([-4], 0, "unknown item id -4", id="negative-id"),
    pytest.param(list(range(1, 52)), 0, "history has 51 items; the limit is 50", id="oversized"),
    pytest.param([1], 101, r"n must be in 1\.\.100", id="n-over-limit"),
    pytest.param([1], -1, r"n must be in 1\.\.100", id="negative-n"),
    pytest.param(list(range(1, 31)), 95, "exceeds the 90 catalogue items", id="n-over-catalogue"),
]


@pytest.mark.parametrize(("history", "n", "message"), BAD_REQUESTS)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(
    start_server, generator, history, n, message
):
    config = ServerConfig(default_n=N, max_n=100, max_history_items=50)
    _, stub, _ = start_server(generator, config)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(req(history, n=n), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, caught.value.details())
    assert_valid(stub.GetCandidates(req([1, 2]), timeout=TIMEOUT), [1, 2], N, 120)


def test_the_exclusion_is_never_returned_and_the_model_does_not_read_it(start_server, generator):
    """Older consumed items sent apart from the history: absent from the list, which is the
    same top-N with them masked (the model reads only the history)."""
    _, stub, _ = start_server(generator)
    history, older = [5, 9, 33], [1, 2, 40, 41, 2]
    plain = stub.GetCandidates(req(history, n=30), timeout=TIMEOUT)
    request = req(history, n=30)
    request.exclude.extend(older)
    response = stub.GetCandidates(request, timeout=TIMEOUT)
    assert_valid(response, history + older, 30, generator.num_items)
    kept = [item for item in plain.items if item not in older]
    assert list(response.items)[: len(kept)] == kept  # the same ranking, excluded items out
    alone = generator.generate([history], n=30, exclude=[older])[0]
    assert list(response.items) == alone.items.tolist()


@pytest.mark.parametrize(
    ("exclude", "n", "message"),
    [
        pytest.param(
            list(range(1, 62)), 5, "exclude has 61 items; the limit is 60", id="oversized"
        ),
        pytest.param([3, 121], 5, "exclude: unknown item id 121", id="unknown-id"),
        pytest.param([0], 5, "exclude: unknown item id 0", id="padding-id"),
        pytest.param(list(range(10, 40)), 90, "exceeds the 88 catalogue items", id="n-over-rest"),
    ],
)
def test_a_bad_exclusion_is_invalid_argument(start_server, generator, exclude, n, message):
    config = ServerConfig(default_n=N, max_n=100, max_exclude_items=60)
    _, stub, _ = start_server(generator, config)
    request = req([1, 2], n=n)
    request.exclude.extend(exclude)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, caught.value.details())


def test_oversized_request_id_is_invalid_argument(start_server, generator):
    _, stub, _ = start_server(generator)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(req([1], request_id="x" * 129), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in caught.value.details()


def test_batch_with_one_bad_request_names_it(start_server, generator):
    _, stub, _ = start_server(generator)
    batch = pb.GetCandidatesBatchRequest(requests=[req([1, 2]), req([]), req([3])])
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidatesBatch(batch, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("requests[1]: history is empty")
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidatesBatch(pb.GetCandidatesBatchRequest(), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a batch needs 1..256 requests, got 0" in caught.value.details()


def test_message_over_the_size_limit_is_refused(start_server, generator):
    config = ServerConfig(default_n=N, max_message_bytes=1024)
    _, stub, _ = start_server(generator, config)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(req([1], user_id="u" * 2000), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_valid(stub.GetCandidates(req([1]), timeout=TIMEOUT), [1], N, 120)


class FussyGenerator:
    """Rejects any history holding item 13 (ValueError) and crashes on item 66."""

    num_items = 120
    model_version = "fussy"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (rows, n) per generate call

    def generate(self, histories, n=50, exclude=None):
        self.calls.append((len(histories), n))
        if any(66 in list(h) for h in histories):
            raise RuntimeError("model crashed")
        if any(13 in list(h) for h in histories):
            raise ValueError("item 13 is not allowed")
        return [
            CandidateList(np.arange(1, n + 1) + 20, -np.arange(n, dtype=np.float32), "fussy")
            for _ in histories
        ]


def test_run_batch_groups_by_n_and_isolates_a_rejected_request():
    generator = FussyGenerator()
    rows = [
        CandidateRequest(np.array([1]), 5, "a"),
        CandidateRequest(np.array([13]), 5, "b"),
        CandidateRequest(np.array([2]), 3, "c"),
    ]
    out = run_batch(generator, rows)
    assert len(out[0]) == 5 and len(out[2]) == 3
    assert isinstance(out[1], ValueError)
    # n=5 rows together (rejected), then one by one; n=3 on its own.
    assert generator.calls == [(2, 5), (1, 5), (1, 5), (1, 3)]


def test_a_crashing_model_is_internal_and_the_server_keeps_serving(start_server):
    _, stub, _ = start_server(FussyGenerator())
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(req([66]), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "model crashed" not in caught.value.details()  # internals stay in the server log
    assert list(stub.GetCandidates(req([1]), timeout=TIMEOUT).items) == list(range(21, 31))


# --------------------------------------------------------------------------- auth


def test_auth_rejects_missing_and_wrong_tokens(start_server, generator):
    config = ServerConfig(default_n=N, auth_token="s3cret")
    _, stub, channel = start_server(generator, config)
    for metadata in (None, (("authorization", "Bearer nope"),), (("authorization", "s3cret"),)):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetCandidates(req([1, 2]), timeout=TIMEOUT, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    good = (("authorization", "Bearer s3cret"),)
    response = stub.GetCandidates(req([1, 2]), timeout=TIMEOUT, metadata=good)
    assert_valid(response, [1, 2], N, generator.num_items)
    # Health stays open for probes; reflection (a streaming rpc) needs the token too.
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as caught:
        list(reflection.ServerReflectionInfo(iter([listing]), timeout=TIMEOUT))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_auth_scheme_is_case_insensitive_and_the_token_is_exact(start_server, generator):
    _, stub, _ = start_server(generator, ServerConfig(default_n=N, auth_token="s3cret"))
    for value in ("bearer s3cret", "BEARER s3cret", "Bearer s3cret "):
        response = stub.GetCandidates(
            req([1, 2]), timeout=TIMEOUT, metadata=(("authorization", value),)
        )
        assert_valid(response, [1, 2], N, generator.num_items)
    for value in ("Basic s3cret", "bearer S3CRET", "Bearer s3cre", "Bearers3cret", "bearer"):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetCandidates(req([1, 2]), timeout=TIMEOUT, metadata=(("authorization", value),))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, value


# --------------------------------------------------------------------------- health, reflection


def test_reflection_describes_the_service(start_server, generator):
    _, _, channel = start_server(generator)
    database = ProtoReflectionDescriptorDatabase(channel)
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(database.get_services())
    service = DescriptorPool(database).FindServiceByName(SERVICE_NAME)
    assert set(service.methods_by_name) == {"GetCandidates", "GetCandidatesBatch"}
    # grpcurl asks for a method by its full name (`describe ...Service.Method`).
    method_file = database.FindFileContainingSymbol(f"{SERVICE_NAME}.GetCandidates")
    assert method_file.name == "protos/lsc4rec/v1/candidates.proto"


def test_health_is_not_serving_while_loading(start_server, generator):
    server, stub, channel = start_server(None)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        check = health_pb2.HealthCheckRequest(service=service)
        assert health.Check(check, timeout=TIMEOUT).status == NOT_SERVING
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(req([1, 2]), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "loading" in caught.value.details()
    server.set_generator(generator)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == SERVING
    assert_valid(stub.GetCandidates(req([1, 2]), timeout=TIMEOUT), [1, 2], N, 120)


def test_shutdown_turns_health_not_serving_and_finishes_in_flight_calls(start_server, generator):
    gated = GatedGenerator(generator)
    config = ServerConfig(default_n=N, grace_s=TIMEOUT, drain_s=0.05)
    server, stub, channel = start_server(gated, config)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT)
    assert next(watch).status == SERVING
    in_flight = stub.GetCandidates.future(req([4, 5]), timeout=TIMEOUT)
    assert gated.entered.wait(TIMEOUT)  # the call is computing (held) when shutdown starts
    stopper = threading.Thread(target=server.shutdown)
    stopper.start()
    # The watch stream stays open while a call is in flight, so this is deterministic.
    assert next(watch).status == NOT_SERVING
    gated.release.set()
    assert_valid(in_flight.result(), [4, 5], N, generator.num_items)
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(req([1, 2]), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_open_health_watches_end_and_do_not_hold_shutdown_for_the_grace(start_server, generator):
    server, _, channel = start_server(generator, ServerConfig(default_n=N, grace_s=120.0))
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert next(watch).status == SERVING
    started = time.monotonic()
    server.shutdown()
    assert time.monotonic() - started < 60.0  # far below the 120 s grace
    assert [r.status for r in watch] == [NOT_SERVING]  # then the stream ends with OK
    assert watch.code() == grpc.StatusCode.OK


# --------------------------------------------------------------------------- deadlines, load


def test_tiny_deadline_is_deadline_exceeded_and_others_are_served(start_server, generator):
    _, stub, _ = start_server(generator)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(req([1, 2]), timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_valid(stub.GetCandidates(req([3, 4]), timeout=TIMEOUT), [3, 4], N, 120)


def test_request_whose_deadline_passes_in_the_queue_never_uses_compute(start_server, generator):
    gated = GatedGenerator(generator)
    config = ServerConfig(default_n=N, max_batch_size=4, max_wait_ms=0)
    server, stub, _ = start_server(gated, config)
    first = stub.GetCandidates.future(req([1, 2]), timeout=TIMEOUT)
    assert gated.entered.wait(TIMEOUT)  # batch 1 computes (held)
    doomed = stub.GetCandidates.future(req([66, 67]), timeout=1.0)
    wait_until(lambda: server.queue_depth == 1)  # queued behind the held batch
    with pytest.raises(grpc.RpcError) as caught:
        doomed.result()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    other = stub.GetCandidates.future(req([3, 4]), timeout=TIMEOUT)
    wait_until(lambda: server.queue_depth == 2)  # the expired call's job and `other`
    gated.release.set()
    assert_valid(first.result(), [1, 2], N, 120)
    assert_valid(other.result(), [3, 4], N, 120)
    assert [66, 67] not in gated.seen
    stats = server.servicer.batcher.stats
    assert stats.cancelled + stats.expired == 1


def test_health_answers_under_data_overload_and_only_data_calls_are_refused(
    start_server, generator, monkeypatch
):
    """A burst of 300 data calls and 60 health checks at once against a full server.

    Two spare handler threads (instead of 16) make the overload reachable with one client.
    """
    monkeypatch.setattr("cloud.server.EXTRA_HANDLER_THREADS", 2)
    gated = GatedGenerator(generator)
    config = ServerConfig(
        default_n=N, max_batch_size=1, max_wait_ms=0, max_queue_size=8, max_batch_requests=2
    )
    server, stub, channel = start_server(gated, config)
    held = [stub.GetCandidates.future(req([1 + i]), timeout=TIMEOUT) for i in range(9)]
    wait_until(lambda: gated.entered.is_set() and server.queue_depth == 8)  # 9 = the data limit
    health = health_pb2_grpc.HealthStub(channel)
    burst = [stub.GetCandidates.future(req([20 + i % 50]), timeout=TIMEOUT) for i in range(300)]
    probes = [
        health.Check.future(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
        for name in ("", SERVICE_NAME) * 30
    ]
    assert [p.result().status for p in probes] == [SERVING] * 60
    codes = set()
    for call in burst:
        with pytest.raises(grpc.RpcError) as caught:
            call.result()
        codes.add(caught.value.code())
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    gated.release.set()
    for call, i in zip(held, range(9)):
        assert_valid(call.result(), [1 + i], N, 120)


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("GetCandidates", bytes(range(256)) * 3),  # random-looking bytes
        ("GetCandidatesBatch", bytes(range(256)) * 3),
        ("GetCandidates", b"\x10\xff"),  # history: a truncated varint
        ("GetCandidates", b"\x10\x01\x22\x02\xff\xfe"),  # request_id: invalid UTF-8
        ("GetCandidates", b"\x0a\x05ab"),  # user_id: a length past the end of the message
    ],
)
def test_unparsable_requests_are_invalid_argument(start_server, generator, method, payload):
    _, stub, channel = start_server(generator)
    raw = channel.unary_unary(f"/{SERVICE_NAME}/{method}")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as caught:
        raw(payload, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in caught.value.details()
    assert_valid(stub.GetCandidates(req([1, 2]), timeout=TIMEOUT), [1, 2], N, 120)


@pytest.mark.parametrize("payload", [b"\x0a\x05ab", b"\x0a\x02\xff\xfe"])
def test_malformed_health_watch_is_invalid_argument(start_server, generator, payload):
    """The streamed branch of the guard: a health Watch whose request does not parse (a length
    past the end, a service name that is not UTF-8), then a good Watch still streams."""
    _, _, channel = start_server(generator)
    raw = channel.unary_stream("/grpc.health.v1.Health/Watch")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(raw(payload, timeout=TIMEOUT)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in caught.value.details()
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert next(watch).status == SERVING
    watch.cancel()


def test_full_queue_answers_resource_exhausted(start_server, generator):
    gated = GatedGenerator(generator)
    config = ServerConfig(
        default_n=N, max_batch_size=1, max_wait_ms=0, max_queue_size=2, max_batch_requests=2
    )
    server, stub, _ = start_server(gated, config)
    running = stub.GetCandidates.future(req([1]), timeout=TIMEOUT)
    assert gated.entered.wait(TIMEOUT)
    queued = [stub.GetCandidates.future(req([h]), timeout=TIMEOUT) for h in (2, 3)]
    wait_until(lambda: server.queue_depth == 2)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCandidates(req([4]), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in caught.value.details()
    gated.release.set()
    for call, history in zip([running, *queued], ([1], [2], [3])):
        assert_valid(call.result(), history, N, 120)
    assert_valid(stub.GetCandidates(req([4]), timeout=TIMEOUT), [4], N, 120)


def test_concurrent_requests_are_computed_in_one_batch(start_server, generator):
    gated = GatedGenerator(generator)
    config = ServerConfig(default_n=N, max_batch_size=8, max_wait_ms=0)
    server, stub, _ = start_server(gated, config)
    first = stub.GetCandidates.future(req([1]), timeout=TIMEOUT)
    assert gated.entered.wait(TIMEOUT)
    calls = [stub.GetCandidates.future(req([h, h + 1]), timeout=TIMEOUT) for h in (10, 20, 30)]
    wait_until(lambda: server.queue_depth == 3)
    gated.release.set()
    assert first.result().timing.batch_size == 1
    assert [c.result().timing.batch_size for c in calls] == [3, 3, 3]
    assert server.servicer.batcher.stats.batches == 2


# --------------------------------------------------------------------------- TLS, config


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost (needs the openssl tool)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_round_trip_and_plain_clients_are_refused(generator, tls_files):
    cert, key = tls_files
    config = ServerConfig(default_n=N, tls_cert_file=str(cert), tls_key_file=str(key))
    server, port = create_server(generator, "127.0.0.1:0", config)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            response = pb_grpc.CandidateServiceStub(channel).GetCandidates(
                req([1, 2]), timeout=TIMEOUT
            )
            assert_valid(response, [1, 2], N, generator.num_items)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.CandidateServiceStub(channel).GetCandidates(req([1]), timeout=TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.shutdown(grace_s=0)


def test_missing_tls_file_is_file_not_found(generator, tmp_path):
    config = ServerConfig(tls_cert_file=str(tmp_path / "no.pem"), tls_key_file=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="TLS file not found"):
        create_server(generator, "127.0.0.1:0", config)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"default_n": 60, "max_n": 50}, "default_n"),
        ({"max_queue_size": 8}, "max_batch_requests"),
        ({"auth_token": " "}, "auth_token"),
        ({"tls_cert_file": "cert.pem"}, "both tls_cert_file and tls_key_file"),
        ({"grace_s": -1}, "grace_s"),
    ],
)
def test_server_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        ServerConfig(**options)


def test_server_config_repr_hides_the_token():
    assert "s3cret" not in repr(ServerConfig(auth_token="s3cret"))


# --------------------------------------------------------------------------- the CLI


def test_serve_cli_reports_a_missing_model_folder(tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_serve_cli_refuses_an_unknown_device(tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path), "--device", "tpu"]) == 2
    assert "--device must be auto, cpu or cuda" in capsys.readouterr().err


def test_serve_cli_reads_the_token_from_a_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("  s3cret\n")
    assert read_token(str(token)) == "s3cret"
    assert read_token(None) is None
    token.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token(str(token))
    with pytest.raises(FileNotFoundError, match="auth token file not found"):
        read_token(str(tmp_path / "missing"))


def test_serve_cli_serves_and_stops_cleanly_on_sigterm(generator, tmp_path):
    """A served run from start to SIGTERM; every line on its stderr is a JSON record, none a warning."""
    model = tmp_path / "llm"
    generator.save_pretrained(model)
    command = [sys.executable, "-m", "cli.main", "serve", "--model", str(model), "--host",
               "127.0.0.1", "--port", "0", "--default-n", str(N), "--torch-threads", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = read_log_until(process, "serving")
        port = next(line["port"] for line in lines if line["msg"] == "listening")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = pb_grpc.CandidateServiceStub(channel).GetCandidates(
                req([1, 2]), timeout=TIMEOUT
            )
            assert response.model_version == generator.model_version
            with pytest.raises(grpc.RpcError) as bad:  # bad input is logged too
                pb_grpc.CandidateServiceStub(channel).GetCandidates(req([]), timeout=TIMEOUT)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        process.send_signal(signal.SIGTERM)
        assert process.wait(3 * TIMEOUT) == 0  # shutdown waits on grace; slow on a loaded machine
        rest = [json.loads(line) for line in process.stderr.read().splitlines()]
        assert [line["msg"] for line in rest][-2:] == ["shutting down", "stopped"]
        warned = [line for line in lines + rest if line["level"] not in ("info", "debug")]
        assert warned == []  # e.g. a library's deprecation notice, captured as JSON
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def read_log_until(process: subprocess.Popen, message: str) -> list[dict]:
    """JSON log lines from the process's stderr up to the first with `msg == message`."""
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        raw = process.stderr.readline()
        if not raw:
            pytest.fail(f"server exited before logging {message!r}: {lines}")
        lines.append(json.loads(raw))  # every stderr line must be a JSON log record
        if lines[-1]["msg"] == message:
            return lines
    pytest.fail(f"no {message!r} log line in time")
