"""The `lsc4rec` console command: one module per subcommand, registered below.

Each subcommand module exposes `add_parser(subparsers)` (which sets `func` on its parser) and
keeps heavy imports (torch, transformers) inside the function that runs, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from shared.progress import NO_PROGRESS_ENV

# Subcommand modules, in the order `lsc4rec --help` lists them.
SUBCOMMAND_MODULES = (
    "cli.data",
    "cli.train_srm",
    "cli.export_onnx",
    "cli.train_llm",
    "cli.candidates",
    "cli.serve",
    "cli.experiment",
    "cli.devices",
    "cli.demo",
)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


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
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # not written yet; keep the rest usable
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except KeyboardInterrupt:
        print(f"lsc4rec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
