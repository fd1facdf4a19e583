"""`lsc4rec demo`: from a fresh clone to results on MovieLens-100k.

Each stage prints what it did and where its output went; stages grow as the project does.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the end-to-end demo on MovieLens-100k")
    parser.add_argument("--out", default="runs/demo", help="folder for models, tables and plots")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared.datasets import load_dataset
    from shared.stats import dataset_stats, format_stats

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("== 1. data: MovieLens-100k (from the recbole wheel on PyPI)")
    dataset = load_dataset("ml-100k")
    print(format_stats(dataset_stats(dataset)))
    return 0
