"""The experiment scripts of `simulations/` as subcommands: `lsc4rec model-table …`,
`ttt-grid`, `llm-grid`, `candidate-table`, `collab-ablation`, `frontier`.

Each keeps its own argument parser (`lsc4rec model-table --help` prints it); the subcommand
hands it every argument after its name.
"""

from __future__ import annotations

import argparse

from simulations import (
    candidate_table,
    collab_ablation,
    frontier,
    llm_grid,
    model_table,
    ttt_grid,
)

SCRIPTS = {
    "model-table": model_table,
    "ttt-grid": ttt_grid,
    "llm-grid": llm_grid,
    "candidate-table": candidate_table,
    "collab-ablation": collab_ablation,
    "frontier": frontier,
}


def summary(module) -> str:
    """The first sentence of a script's docstring, for `lsc4rec --help`."""
    first = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    return first.split(": ")[0].rstrip(".")


def add_parser(subparsers) -> None:
    for name, module in SCRIPTS.items():
        parser = subparsers.add_parser(name, help=summary(module), add_help=False)
        parser.set_defaults(func=_runner(module), passthrough=True)


def _runner(module):
    def run(args: argparse.Namespace) -> int:
        return int(module.main(args.rest) or 0)

    return run
