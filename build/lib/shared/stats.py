"""Summary statistics of a data set, as `lsc4rec data stats` prints them."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from shared.datasets.base import SequenceDataset

PERCENTILES = (5, 25, 50, 75, 95)


def dataset_stats(dataset: SequenceDataset, test_window: int = 10, min_extra: int = 5) -> dict:
    """Users, items, interactions, density, sequence-length percentiles, time span, stream users."""
    lengths = np.array([len(s) for s in dataset.sequences])
    stamps = np.concatenate(dataset.timestamps)
    n_users, n_items, n_inter = dataset.num_users, dataset.num_items, dataset.num_interactions
    return {
        "dataset": dataset.name,
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "density": n_inter / (n_users * n_items),
        "length_min": int(lengths.min()),
        "length_mean": float(lengths.mean()),
        "length_max": int(lengths.max()),
        "length_percentiles": {p: float(np.percentile(lengths, p)) for p in PERCENTILES},
        "first_time": int(stamps.min()),
        "last_time": int(stamps.max()),
        "span_days": (int(stamps.max()) - int(stamps.min())) / 86400.0,
        "stream_users": int((lengths >= test_window + min_extra).sum()),
        "test_window": test_window,
    }


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


def format_stats(stats: dict) -> str:
    """A two-column table a person can read."""
    pct = ", ".join(f"p{p}={v:g}" for p, v in stats["length_percentiles"].items())
    rows = [
        ("dataset", stats["dataset"]),
        ("users", f"{stats['users']:,}"),
        ("items", f"{stats['items']:,}"),
        ("interactions", f"{stats['interactions']:,}"),
        ("density", f"{stats['density']:.4%}"),
        (
            "sequence length",
            f"min={stats['length_min']}, mean={stats['length_mean']:.1f}, "
            f"max={stats['length_max']}",
        ),
        ("length percentiles", pct),
        (
            "time span",
            f"{_date(stats['first_time'])} .. {_date(stats['last_time'])} "
            f"({stats['span_days']:.0f} days)",
        ),
        (f"stream users (T={stats['test_window']})", f"{stats['stream_users']:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
