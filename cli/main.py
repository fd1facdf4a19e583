"""The `lsc4rec` console command: one module per subcommand, imported only when it runs.

Each subcommand module exposes `add_parser(subparsers)` (which sets `func` on its parser) and
imports what it uses at its top. This module knows the commands by name and one-line help
(`COMMANDS`), so `lsc4rec --help` imports none of them, and `lsc4rec COMMAND …` imports that
command's module alone (a device with only the runtime installed can run `inspect-device`). A
module whose import breaks fails the command loudly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from cli.common import CLIError
from shared.progress import NO_PROGRESS_ENV

# What `pip install 'lsc4rec[full]'` adds to the device runtime (pyproject.toml).
FULL_INSTALL_MODULES = frozenset(
    {"torch", "transformers", "peft", "tokenizers", "safetensors", "onnx", "onnxscript", "tqdm",
     "matplotlib", "grpc_health", "grpc_reflection"}
)  # fmt: skip

# (command, its module, its one-line help), in the order `lsc4rec --help` lists them.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("data", "cli.data", "prepare data sets and print their statistics"),
    ("train-srm", "cli.train_srm", "train a small recommendation model (SRM)"),
    ("export-onnx", "cli.export_onnx", "export a TTT4Rec's or GRU4Rec's step and scorer graphs"),
    ("export-device", "cli.export_device",
     "write a device bundle: SRM graphs, policy, fusion, settings"),
    ("inspect-device", "cli.inspect_device", "verify a device bundle and say what it runs"),
    ("train-llm", "cli.train_llm", "train the cloud LLM candidate generator"),
    ("candidates", "cli.candidates",
     "generate a ranked candidate list from a saved LLM generator"),
    ("serve", "cli.serve",
     "serve the candidate generator over gRPC (health, reflection, batching)"),
    ("experiment", "cli.experiment", "run an experiment (request rate vs accuracy)"),
    ("devices", "cli.devices", "run simulated devices against the gRPC server (live fleet)"),
    ("model-table", "cli.tables", "The TTT4Rec abstract's model table on our data"),
    ("ttt-grid", "cli.tables", "The TTT4Rec paper's hyper-parameter figure on our data"),
    ("llm-grid", "cli.tables", "Size the item-LM generator by validation"),
    ("candidate-table", "cli.tables",
     "How good are the cloud's candidate lists, and how much does a fresh one beat a stale one?"),
    ("collab-ablation", "cli.tables",
     "Ablation of LSC4Rec's collaborative training on the device model, and of score fusion"),
    ("frontier", "cli.tables",
     "Device models at a per-click budget"),
    ("demo", "cli.demo", "the end-to-end demo on MovieLens-100k"),
)  # fmt: skip


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `lsc4rec` parser: every command listed by name and help; `command`'s own module
    imported and its full parser added (with every other command its module registers)."""
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
    module = {name: owner for name, owner, _ in COMMANDS}.get(command)
    for name, owner, text in COMMANDS:
        if owner != module:
            subparsers.add_parser(name, help=text, add_help=False)  # listed, not imported
        elif name == next(n for n, o, _ in COMMANDS if o == owner):
            importlib.import_module(owner).add_parser(subparsers)  # all of its commands
    return parser


# Options whose value may start with "-" (a token from `secrets.token_urlsafe` does, 1 time in
# 64): argparse would take `--token -x…` for two options, so the pair is joined first.
VALUE_OPTIONS = ("--token",)


def join_option_values(argv: list[str], options: tuple[str, ...] = VALUE_OPTIONS) -> list[str]:
    """`[…, "--token", "-abc", …]` as `[…, "--token=-abc", …]` (argparse reads both alike)."""
    out, index = [], 0
    while index < len(argv):
        if argv[index] in options and index + 1 < len(argv):
            out.append(f"{argv[index]}={argv[index + 1]}")
            index += 2
        else:
            out.append(argv[index])
            index += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = join_option_values(sys.argv[1:] if argv is None else list(argv))
    known, _ = build_parser().parse_known_args(argv)  # which command, without importing any
    try:
        parser = build_parser(known.command)
    except ModuleNotFoundError as err:
        return _missing(known.command, err)
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
    except (CLIError, ValueError, OSError) as err:  # OSError: a file or address problem
        print(f"lsc4rec {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        return _missing(args.command, err)
    except KeyboardInterrupt:
        print(f"lsc4rec {args.command}: interrupted", file=sys.stderr)
        return 130


def _missing(command: str, err: ModuleNotFoundError) -> int:
    """One line for a command that needs the full install; any other missing module raises."""
    if (err.name or "").split(".")[0] not in FULL_INSTALL_MODULES:
        raise err
    print(f"lsc4rec {command}: error: needs {err.name}, which the device runtime install "
          "leaves out: pip install 'lsc4rec[full]'", file=sys.stderr)  # fmt: skip
    return 2


if __name__ == "__main__":
    sys.exit(main())
