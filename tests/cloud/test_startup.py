"""Serve only what was saved, fail in one line: model integrity, start-up errors, the server's
stderr, refused calls while loading, and batches with many n.

The start-up battery runs the real `lsc4rec serve` in subprocesses (all at once, to keep the
run short); the rest talk to a real server on a loopback port.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from cloud.loading import load_generator
from cloud.logs import configure_json_logging
from cloud.server import ServerConfig, create_server
from protos.lsc4rec.v1 import candidates_pb2 as pb
from protos.lsc4rec.v1 import candidates_pb2_grpc as pb_grpc
from shared.manifest import MANIFEST_NAME, ManifestError

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
N = 10
WEIGHTS = Path("model") / "model.safetensors"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a new connection per channel
SERVE = [sys.executable, "-m", "cli.main", "serve", "--torch-threads", "1"]


@pytest.fixture(scope="module")
def saved(served_generator, tmp_path_factory) -> Path:
    """The served tiny generator saved once (with its manifest)."""
    folder = tmp_path_factory.mktemp("startup") / "llm"
    served_generator.save_pretrained(folder)
    return folder


def copy_of(saved: Path, target: Path, manifest: bool = True) -> Path:
    import shutil

    shutil.copytree(saved, target)
    if not manifest:
        (target / MANIFEST_NAME).unlink()
    return target


def drop_one_weight(folder: Path) -> str:
    """Delete one tensor from the saved model (as the outside probe did); returns its name."""
    tensors = load_file(str(folder / WEIGHTS))
    name = next(name for name in sorted(tensors) if "down_proj" in name)
    del tensors[name]
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    return name


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF  # inside the tensor data: the file still parses
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- strict loading


def test_save_writes_a_manifest_of_every_file(saved):
    manifest = json.loads((saved / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "generator" and manifest["format_version"] == 1
    assert WEIGHTS.as_posix() in manifest["files"] and "generator.json" in manifest["files"]
    assert "written_by" in manifest
    assert load_generator(saved).model_version == manifest["model_version"]


def test_a_missing_weight_is_refused_with_or_without_a_manifest(
    saved, tmp_path, capfd, manifest_warnings
):
    with_manifest = copy_of(saved, tmp_path / "a")
    drop_one_weight(with_manifest)
    with pytest.raises(ManifestError, match="model/model.safetensors does not match its SHA-256"):
        load_generator(with_manifest)
    # A folder from before manifests: the strict load itself refuses the missing tensor.
    legacy = copy_of(saved, tmp_path / "b", manifest=False)
    name = drop_one_weight(legacy)
    capfd.readouterr()
    with pytest.raises(ValueError, match=f"missing weight {name}; refusing to load"):
        load_generator(legacy)
    assert "LOAD REPORT" not in capfd.readouterr().err  # transformers' report stays off stderr
    [warning] = manifest_warnings
    assert "written before manifests" in warning.getMessage()


def test_a_folder_without_a_manifest_loads_with_one_warning(saved, tmp_path, manifest_warnings):
    legacy = copy_of(saved, tmp_path / "legacy", manifest=False)
    generator = load_generator(legacy)
    [warning] = manifest_warnings
    assert warning.levelno == logging.WARNING
    assert "no manifest.json (written before manifests)" in warning.getMessage()
    assert generator.generate([[1, 2, 3]], n=5)[0].items.shape == (5,)


def test_a_bad_generator_json_names_the_file(saved, tmp_path):
    folder = copy_of(saved, tmp_path / "g", manifest=False)
    (folder / "generator.json").write_text('{"kind": "item-lm", "x": "unterminated')
    with pytest.raises(ValueError, match=r"generator\.json: not valid JSON"):
        load_generator(folder)


def test_a_training_log_beside_the_model_is_not_a_mismatch(saved, tmp_path):
    folder = copy_of(saved, tmp_path / "t")
    (folder / "training_log.json").write_text("{}")  # written by train-llm after saving
    load_generator(folder)
    (folder / "adapter").mkdir()  # anything a loader would read must be in the manifest
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ManifestError, match="adapter/adapter_config.json is not in the manifest"):
        load_generator(folder)


# --------------------------------------------------------------------------- start-up battery


@dataclass
class Case:
    name: str
    args: list[str]
    error: str  # a piece of the one error line
    one_line: bool = True  # False: a folder from before manifests (its warning comes first)


def _tls_pair(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def battery(saved: Path, folder: Path, busy_port: int) -> list[Case]:
    """The outside probe's start-up failures, each as `serve` arguments."""
    cases = []

    def model(name: str, change, manifest: bool = True) -> list[str]:
        target = copy_of(saved, folder / name, manifest)
        change(target)
        return ["--model", str(target), "--host", "127.0.0.1", "--port", "0"]

    cases.append(Case("corrupt weights", model("corrupt", lambda f: flip_a_byte(f / WEIGHTS)),
                      "model/model.safetensors does not match its SHA-256"))  # fmt: skip
    cases.append(Case("truncated weights", model("truncated", lambda f: truncate(f / WEIGHTS)),
                      "model/model.safetensors does not match its SHA-256"))  # fmt: skip
    cases.append(Case("missing tensor", model("missing", drop_one_weight),
                      "model/model.safetensors does not match its SHA-256"))  # fmt: skip
    bad_config = lambda f: (f / "model" / "config.json").write_text("{not json")  # noqa: E731
    cases.append(Case("config.json not JSON", model("config", bad_config),
                      "model/config.json does not match its SHA-256"))  # fmt: skip
    cases.append(Case("no such folder", ["--model", str(folder / "nothing"), "--port", "0"],
                      "model folder not found"))  # fmt: skip
    # Folders from before manifests: refused by the strict load, after the listening line.
    cases.append(Case("truncated, no manifest", model("t2", lambda f: truncate(f / WEIGHTS), False),
                      "unreadable weights (truncated?)", one_line=False))  # fmt: skip
    cases.append(Case("missing tensor, no manifest", model("m2", drop_one_weight, False),
                      "missing weight model.layers.0.mlp.down_proj.weight", one_line=False))  # fmt: skip
    cases.append(Case("config.json not JSON, no manifest", model("c2", bad_config, False),
                      "model/config.json: unreadable model config", one_line=False))  # fmt: skip
    bad_meta = lambda f: (f / "generator.json").write_text('{"kind": "item-lm", "x": "u')  # noqa: E731
    cases.append(Case("generator.json not JSON, no manifest", model("g2", bad_meta, False),
                      "generator.json: not valid JSON", one_line=False))  # fmt: skip
    good = ["--model", str(saved)]
    cert, key = _tls_pair(folder, "server")
    _, other_key = _tls_pair(folder, "other")
    cases.append(Case("TLS key of another certificate",
                      [*good, "--port", "0", "--tls-cert", str(cert), "--tls-key", str(other_key)],
                      f"TLS key {other_key} does not match the certificate {cert}"))  # fmt: skip
    cases.append(Case("port in use", [*good, "--host", "127.0.0.1", "--port", str(busy_port)],
                      f"port {busy_port} is already in use"))  # fmt: skip
    cases.append(Case("host not local", [*good, "--host", "192.0.2.1", "--port", "50123"],
                      "192.0.2.1 is not an address of this machine"))  # fmt: skip
    return cases


def test_start_up_failures_are_one_line_exit_2_and_nothing_served(saved, tmp_path):
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = battery(saved, tmp_path, busy.getsockname()[1])
        processes = [
            subprocess.Popen([*SERVE, *case.args], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for case in cases
        ]  # fmt: skip
        outputs = [process.communicate(timeout=240) for process in processes]
    table = []
    for case, process, (out, err) in zip(cases, processes, outputs):
        lines = err.strip().splitlines()
        records = [json.loads(line) for line in lines]  # every line a JSON record
        last = records[-1]
        table.append((case.name, process.returncode, len(lines), last.get("error", "")))
        assert process.returncode == 2, (case.name, err)
        assert out == "", case.name
        assert last["level"] == "error" and last["msg"] == "cannot start", case.name
        assert case.error in last["error"], (case.name, last["error"])
        assert not any(r["msg"] == "serving" for r in records), case.name  # nothing served
        if case.one_line:
            assert len(lines) == 1, (case.name, lines)
        else:
            assert "written before manifests" in records[0]["msg"]  # the one warning
            if any(r["msg"] == "listening" for r in records):  # refused by the load itself
                assert [r["msg"] for r in records][-3:-1] == ["shutting down", "stopped"]
    print(
        "\n".join(
            f"{name}: exit {code}, {count} line(s): {error}" for name, code, count, error in table
        )
    )


# --------------------------------------------------------------------------- the server's stderr


def test_server_stderr_is_json_lines_and_handshake_failures_are_throttled(saved, tmp_path):
    """Plaintext clients calling a TLS server: gRPC's C core logs each failed handshake."""
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed")
    cert, key = _tls_pair(tmp_path, "server")
    command = [*SERVE, "--model", str(saved), "--host", "127.0.0.1", "--port", "0",
               "--tls-cert", str(cert), "--tls-key", str(key)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        port = _read_until(process, "serving")
        start = time.monotonic()
        for _ in range(10):
            with (
                grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel,
                pytest.raises(grpc.RpcError),
            ):
                pb_grpc.CandidateServiceStub(channel).GetCandidates(
                    pb.GetCandidatesRequest(history=[1]), timeout=0.5
                )
        elapsed = time.monotonic() - start
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    records = [json.loads(line) for line in rest.splitlines()]  # every line JSON
    failures = [r for r in records if r["msg"] == "TLS handshake failed"]
    assert failures and all(r["logger"] == "grpc" for r in failures)
    counted = sum(r["failures"] for r in failures)
    assert len(failures) <= elapsed + 2  # at most one record per second (and one at the end)
    assert counted > len(failures)  # several failures in one record
    print(f"{counted} handshake failures in {elapsed:.1f} s: {len(failures)} records")


def _read_until(process: subprocess.Popen, message: str) -> int:
    """Read JSON records from the server's stderr up to `message`; returns the bound port."""
    port = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        assert line, f"the server exited before {message!r}"
        record = json.loads(line)
        port = record.get("port", port)
        if record["msg"] == message:
            return port
    pytest.fail(f"no {message!r} in time")


# --------------------------------------------------------------------------- while loading


def test_calls_refused_while_loading_are_counted_and_logged_once_a_second(served_generator):
    stream = io.StringIO()
    saved_handlers = logging.getLogger("lsc4rec").handlers[:]
    configure_json_logging("info", stream)
    server, port = create_server(None, "127.0.0.1:0", ServerConfig(default_n=N))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.CandidateServiceStub(channel)
            start = time.monotonic()
            for _ in range(60):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.GetCandidates(pb.GetCandidatesRequest(history=[1]), timeout=TIMEOUT)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            elapsed = time.monotonic() - start
            during = _records(stream, "refused while loading")
            server.set_generator(served_generator)
            stub.GetCandidates(pb.GetCandidatesRequest(history=[1]), timeout=TIMEOUT)
    finally:
        server.shutdown(grace_s=0)
        logging.getLogger("lsc4rec").handlers[:] = saved_handlers
    assert 1 <= len(during) <= elapsed + 1
    refused = _records(stream, "refused while loading")
    assert sum(r["calls"] for r in refused) == 60  # the rest is logged when loading ends
    assert not _records(stream, "request failed")


def _records(stream: io.StringIO, message: str) -> list[dict]:
    return [r for r in map(json.loads, stream.getvalue().splitlines()) if r["msg"] == message]


# --------------------------------------------------------------------------- batches with many n


class CountingGenerator:
    """The served generator, counting model calls."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.num_items = inner.num_items
        self.model_version = inner.model_version
        self.nested_top_n = inner.nested_top_n
        self.calls: list[tuple[int, int]] = []

    def generate(self, histories, n=50, exclude=None):
        self.calls.append((len(histories), n))
        return self.inner.generate(histories, n=n, exclude=exclude)


def test_a_batch_with_many_n_is_one_model_call_cut_per_request(served_generator):
    counting = CountingGenerator(served_generator)
    server, port = create_server(counting, "127.0.0.1:0", ServerConfig(default_n=N))
    rng = np.random.default_rng(0)
    histories = [rng.choice(np.arange(1, 121), size=6, replace=False).tolist() for _ in range(16)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            batch = pb.GetCandidatesBatchRequest(
                requests=[
                    pb.GetCandidatesRequest(history=h, n=1 + i) for i, h in enumerate(histories)
                ]
            )
            answer = pb_grpc.CandidateServiceStub(channel).GetCandidatesBatch(
                batch, timeout=TIMEOUT
            )
    finally:
        server.shutdown(grace_s=0)
    assert counting.calls == [(16, 16)]  # one forward pass at the largest n
    for i, (history, response) in enumerate(zip(histories, answer.responses)):
        alone = served_generator.generate([history], n=1 + i)[0]
        assert list(response.items) == alone.items.tolist()
        np.testing.assert_allclose(response.scores, alone.scores, rtol=1e-5, atol=1e-6)


def test_the_cut_is_the_whole_ranking_prefix(served_generator):
    """The premise of one call: the item LM's top-n is a prefix of its top-m for n < m."""
    history = [5, 9, 33]
    long = served_generator.generate([history], n=40)[0]
    for n in (1, 7, 25):
        assert (
            served_generator.generate([history], n=n)[0].items.tolist() == long.items[:n].tolist()
        )
