"""Generate the Python gRPC stubs from the `.proto` files: `python -m protos.codegen`.

protoc runs with the repository root as its include path, so a file at
`protos/lsc4rec/v1/candidates.proto` yields `protos/lsc4rec/v1/candidates_pb2.py`,
`candidates_pb2.pyi` and `candidates_pb2_grpc.py`, and the generated imports come out
package-qualified (`from protos.lsc4rec.v1 import candidates_pb2`). The stubs are committed;
`tests/test_protos.py` regenerates them into a temporary folder and fails when they drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(root: Path = REPO_ROOT) -> list[Path]:
    """Every `.proto` under `protos/`, relative to `root`, sorted (stable output)."""
    return sorted(p.relative_to(root) for p in (root / "protos").rglob("*.proto"))


def generated_files(proto: Path) -> list[Path]:
    """The three stub paths protoc writes for `proto` (relative paths, like `proto`)."""
    stem = proto.with_suffix("")
    return [stem.parent / f"{stem.name}{suffix}" for suffix in GENERATED_SUFFIXES]


def generate(out_dir: Path = REPO_ROOT, root: Path = REPO_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) on every proto; write the stubs under `out_dir`.

    Args:
        out_dir: folder the package-relative stub paths are written under (the repository
            root to update the committed stubs, a temporary folder to check them).
        root: repository root, the include path.
    Returns:
        the paths written.
    Raises:
        RuntimeError: protoc failed (its message is on stderr).
        ModuleNotFoundError: grpcio-tools is not installed (`pip install -e '.[dev]'`).
    """
    import grpc_tools
    from grpc_tools import protoc

    protos = proto_files(root)
    # grpc_tools ships the well-known types (google/protobuf/*.proto) in its own folder.
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        # Absolute paths under the include root: protoc names them relative to it, whatever
        # the working directory.
        *(str(root / p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {[str(p) for p in protos]}")
    return [out_dir / g for p in protos for g in generated_files(p)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protos.codegen", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT, help="output root (default: the repository root)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
