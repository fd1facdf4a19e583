"""The proto contract: committed stubs match the .proto, every rpc and field is documented,
and the package's version bounds match what the stubs need."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2

from protos import codegen
from protos.lsc4rec.v1 import candidates_pb2, candidates_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]

# Lines that record which grpcio-tools/protobuf produced a stub. They change with the tool
# version, not with the contract, so the drift check ignores them (the version-bound test
# below checks them against pyproject.toml instead).
VERSION_STAMPS = (
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)", re.S),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
)


def without_version_stamps(text: str) -> str:
    for pattern in VERSION_STAMPS:
        text = pattern.sub("<version>", text)
    return text


def test_committed_stubs_match_the_proto(tmp_path):
    written = codegen.generate(out_dir=tmp_path)
    assert written, "no .proto file found under protos/"
    for fresh in written:
        relative = fresh.relative_to(tmp_path)
        committed = REPO_ROOT / relative
        assert committed.is_file(), f"{relative} is not committed; run `python -m protos.codegen`"
        assert without_version_stamps(committed.read_text()) == without_version_stamps(
            fresh.read_text()
        ), f"{relative} drifted from its .proto; run `python -m protos.codegen` and commit"


def test_generated_imports_are_package_qualified():
    grpc_stub = (REPO_ROOT / "protos/lsc4rec/v1/candidates_pb2_grpc.py").read_text()
    assert "from protos.lsc4rec.v1 import candidates_pb2 as" in grpc_stub
    assert candidates_pb2.DESCRIPTOR.package == "lsc4rec.v1"
    assert candidates_pb2.DESCRIPTOR.name == "protos/lsc4rec/v1/candidates.proto"


def described_file(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    """The proto compiled with its comments (source info) kept."""
    from grpc_tools import protoc

    out = tmp_path / "candidates.desc"
    proto = REPO_ROOT / "protos/lsc4rec/v1/candidates.proto"
    status = protoc.main(
        ["protoc", f"--proto_path={REPO_ROOT}", "--include_source_info",
         f"--descriptor_set_out={out}", str(proto)]
    )  # fmt: skip
    assert status == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]


def test_every_rpc_message_and_field_is_commented(tmp_path):
    file = described_file(tmp_path)
    comments = {
        tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location
    }
    # Descriptor paths: message_type = 4, its field = 2; service = 6, its method = 2.
    missing = []
    for m, message in enumerate(file.message_type):
        if not comments.get((4, m)):
            missing.append(message.name)
        missing += [
            f"{message.name}.{field.name}"
            for f, field in enumerate(message.field)
            if not comments.get((4, m, 2, f))
        ]
    for s, service in enumerate(file.service):
        if not comments.get((6, s)):
            missing.append(service.name)
        missing += [
            f"{service.name}.{method.name}"
            for r, method in enumerate(service.method)
            if not comments.get((6, s, 2, r))
        ]
    assert not missing, f"undocumented in the .proto: {missing}"
    timing = file.message_type[[m.name for m in file.message_type].index("ServerTiming")]
    assert all(field.name.endswith("_us") or field.name == "batch_size" for field in timing.field)


def stub_versions() -> tuple[str, str]:
    """(protobuf gencode version, grpcio version) the committed stubs require."""
    pb2 = (REPO_ROOT / "protos/lsc4rec/v1/candidates_pb2.py").read_text()
    protobuf = re.search(r"^# Protobuf Python Version: (\S+)$", pb2, re.M).group(1)
    return protobuf, candidates_pb2_grpc.GRPC_GENERATED_VERSION


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def lower_bound(requirements: list[str], name: str) -> str:
    for requirement in requirements:
        match = re.match(rf"^{re.escape(name)}\s*>=\s*([\d.]+)", requirement)
        if match:
            return match.group(1)
    raise AssertionError(f"pyproject.toml has no lower bound for {name}")


def test_pyproject_bounds_admit_only_runtimes_the_stubs_accept():
    # The lower bounds are the locked versions (tests/test_lock.py); they must never fall
    # below what the committed stubs check at import.
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    protobuf, grpcio = stub_versions()
    runtime = project["dependencies"] + project["optional-dependencies"]["full"]
    assert version_tuple(lower_bound(runtime, "protobuf")) >= version_tuple(protobuf)
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert version_tuple(lower_bound(runtime, name)) >= version_tuple(grpcio), name
    tools = lower_bound(project["optional-dependencies"]["dev"], "grpcio-tools")
    assert version_tuple(tools) >= version_tuple(grpcio)


def test_installed_runtime_satisfies_the_stubs():
    from google.protobuf import __version__ as protobuf_runtime

    protobuf, grpcio = stub_versions()
    assert version_tuple(protobuf_runtime) >= version_tuple(protobuf)
    assert version_tuple(grpc.__version__) >= version_tuple(grpcio)
