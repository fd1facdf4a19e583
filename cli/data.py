"""`lsc4rec data prepare|stats`: fetch and cache a data set, print its statistics."""

from __future__ import annotations

import argparse
import json

from cli.common import add_dataset_args, load_dataset_from_args
from shared.datasets.movielens100k import wheel_path
from shared.stats import dataset_stats, format_stats


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="prepare data sets and print their statistics")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    prepare = actions.add_parser(
        "prepare", help="fetch and cache a data set (ml-100k comes from the recbole wheel on PyPI)"
    )
    add_dataset_args(prepare)
    prepare.set_defaults(func=run_prepare)

    stats = actions.add_parser("stats", help="users, items, interactions, lengths, time span")
    add_dataset_args(stats)
    stats.add_argument("--test-window", type=int, default=10, help="online stream length T")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=run_stats)


def run_prepare(args: argparse.Namespace) -> int:
    dataset = load_dataset_from_args(args)
    where = ""
    if args.dataset == "ml-100k":
        where = f" (cached at {wheel_path()})"
    print(
        f"{dataset.name}: {dataset.num_users} users, {dataset.num_items} items, "
        f"{dataset.num_interactions} interactions ready{where}"
    )
    return 0


def run_stats(args: argparse.Namespace) -> int:

    stats = dataset_stats(load_dataset_from_args(args), test_window=args.test_window)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0
