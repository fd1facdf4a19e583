"""Data sets by name: the built-in MovieLens-100k and synthetic data, and a user's own files.

load_dataset("ml-100k")
load_dataset("synthetic", num_users=200, seed=1)
load_dataset("ml-1m", path="ml-1m/ratings.dat")
load_dataset("amazon", path="reviews_Beauty_5.json.gz", k_core=5)
load_dataset("csv", path="my_log.csv")
"""

from __future__ import annotations

from pathlib import Path

from shared.datasets import files
from shared.datasets.base import (
    DatasetError,
    InteractionLog,
    SequenceDataset,
    build_sequence_dataset,
)
from shared.datasets.movielens100k import load_movielens_100k
from shared.datasets.synthetic import make_synthetic

BUILT_IN = ("ml-100k", "synthetic")
FROM_FILE = ("ml-1m", "amazon", "csv")
DATASETS = BUILT_IN + FROM_FILE

__all__ = [
    "DATASETS",
    "DatasetError",
    "InteractionLog",
    "SequenceDataset",
    "build_sequence_dataset",
    "load_dataset",
]


def load_dataset(
    name: str, path: str | Path | None = None, k_core: int = 0, **options
) -> SequenceDataset:
    """Load a data set by name.

    Args:
        name: one of `DATASETS`.
        path: the file to read, for "ml-1m", "amazon" and "csv".
        k_core: keep only users and items with at least this many interactions (0 = off).
        options: for "synthetic", fields of `SyntheticConfig` (num_users, seed, …).
    Raises:
        ValueError: unknown name, or a path missing where one is needed.
        FileNotFoundError: the path does not exist.
        DatasetError: the file cannot be read (the message names the file and the problem).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name in FROM_FILE:
        if path is None:
            raise ValueError(f"dataset {name!r} needs --path to the file to read")
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file")
    if name == "ml-100k":
        dataset = load_movielens_100k()
        return dataset if k_core <= 1 else _refilter(dataset, k_core)
    if name == "synthetic":
        return make_synthetic(**options)

    readers = {
        "ml-1m": files.read_movielens_1m,
        "amazon": files.read_amazon_reviews,
        "csv": files.read_csv_interactions,
    }
    log = readers[name](path)
    return build_sequence_dataset(log, name=name, k_core=k_core, source=str(path))


def _refilter(dataset: SequenceDataset, k_core: int) -> SequenceDataset:
    """Apply k-core filtering to an already built data set (by rebuilding it from its log)."""
    import numpy as np

    users = np.concatenate([[u] * len(s) for u, s in zip(dataset.user_ids, dataset.sequences)])
    items = np.concatenate(
        [np.asarray(dataset.item_ids, dtype=object)[s] for s in dataset.sequences]
    )
    stamps = np.concatenate(dataset.timestamps)
    titles = {}
    if dataset.item_titles is not None:
        titles = dict(zip(dataset.item_ids[1:], dataset.item_titles[1:]))
    attributes = {}
    if dataset.item_attributes is not None:
        attributes = dict(zip(dataset.item_ids[1:], dataset.item_attributes[1:]))
    log = InteractionLog(users, items.astype(str), stamps, titles, attributes)
    return build_sequence_dataset(log, name=dataset.name, k_core=k_core)
