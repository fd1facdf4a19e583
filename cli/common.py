"""Arguments several subcommands share, and how they turn into library objects."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.datasets import DATASETS, load_dataset


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def add_dataset_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--dataset",
        required=required,
        metavar="NAME",
        help=f"data set: {', '.join(DATASETS)}",
    )
    parser.add_argument("--path", default=None, help="file to read (ml-1m, amazon, csv)")
    parser.add_argument("--k-core", type=int, default=0, help="k-core filter (0 = off)")
    parser.add_argument(
        "--synthetic-users", type=int, default=500, help="users of the synthetic data set"
    )
    parser.add_argument(
        "--synthetic-items", type=int, default=1000, help="items of the synthetic data set"
    )
    parser.add_argument(
        "--synthetic-simulator",
        choices=("per-user", "batched"),
        default="per-user",
        help="per-user: the README's synthetic data; batched: every user at once, for "
        "10^5-10^6 users (same story, another random stream)",
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")


def load_dataset_from_args(args: argparse.Namespace):

    if args.dataset == "synthetic":
        return load_dataset(
            "synthetic",
            num_users=args.synthetic_users,
            num_items=args.synthetic_items,
            seed=args.data_seed,
            batched=args.synthetic_simulator == "batched",
        )
    return load_dataset(args.dataset, path=args.path, k_core=args.k_core)


def read_token(path: str | None) -> str | None:
    """The token in `path` (surrounding whitespace removed), or None without a path.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty.
    """
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"auth token file not found: {path}")
    token = file.read_text().strip()
    if not token:
        raise ValueError(f"auth token file is empty: {path}")
    return token
