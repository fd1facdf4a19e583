"""The `lsc4rec` console command: one module per subcommand, registered below.

Each subcommand module exposes `add_parser(subparsers)` (which sets `func` on its parser) and
keeps heavy imports (torch, transformers) inside the function that runs, so `--help` is fast.
The modules are imported plainly: a subcommand whose import breaks fails the command loudly
instead of vanishing from `--help`.
"""

from __future__ import annotations

import argparse
import os
import sys

from cli import (
    candidates,
    data,
    demo,
    devices,
    experiment,
    export_device,
    export_onnx,
    serve,
    tables,
    train_llm,
    train_srm,
)
from cli.common import CLIError
from shared.progress import NO_PROGRESS_ENV

# What `pip install 'lsc4rec[full]'` adds to the device runtime (pyproject.toml).
FULL_INSTALL_MODULES = frozenset(
    {"torch", "transformers", "peft", "tokenizers", "safetensors", "onnx", "onnxscript", "tqdm",
     "matplotlib", "grpc_health", "grpc_reflection"}
)  # fmt: skip

# Subcommand modules, in the order `lsc4rec --help` lists them.
SUBCOMMANDS = (
    data,
    train_srm,
    export_onnx,
    export_device,
    train_llm,
    candidates,
    serve,
    experiment,
    devices,
    tables,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsc4rec",
        description="Device-cloud collaborative recommendation (LLM candidates + TTT4Rec reranking).",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        dest="global_no_progress",  # subcommands may have their own --no-progress
        help=f"no progress bars (the same as {NO_PROGRESS_ENV}=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):
        args.rest = rest  # an experiment script parses its own arguments (cli.tables)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.global_no_progress:
        os.environ[NO_PROGRESS_ENV] = "1"  # read by every bar, in this process and its children
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as err:
        print(f"lsc4rec {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in FULL_INSTALL_MODULES:
            raise
        print(f"lsc4rec {args.command}: error: needs {err.name}, which the device runtime "
              "install leaves out: pip install 'lsc4rec[full]'", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"lsc4rec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
