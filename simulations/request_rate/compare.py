"""Compare two request-rate runs on the same stream, user by user (paired intervals).

    python -m simulations.request_rate.compare runs/rr_before runs/rr_after --rates 0.1,0.2

For each target rate, the policy each run chose there (its goal table's `best`), and for each
reference row both runs have: NDCG@10 in each run and after − before with a paired bootstrap
interval over users (the runs must share their test users). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shared.metrics import ndcg
from simulations.request_rate.statistics import bootstrap_indices, paired_difference

REFERENCE_ROWS = ("never", "never_llm_order", "always", "llm_only")


def load_run(folder: Path) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """The run's JSON, per-user NDCG@10 by point label, and its test users."""
    payload = json.loads((folder / "request_rate.json").read_text())
    records = np.load(folder / "records.npz")
    per_user = {
        str(label): ndcg(ranks, 10).mean(axis=1)
        for label, ranks in zip(records["labels"], records["ranks"])
    }
    return payload, per_user, records["users"]


def chosen_label(payload: dict, rate: float) -> str | None:
    """The label of the policy the run chose at target `rate` (None when it has none)."""
    for goal in payload["goal"]:
        if goal["target_rate"] == rate:
            return goal["best"]  # the chosen point's label
    return None


def compare(before: Path, after: Path, rates: list[float], draws: int = 1000) -> str:
    a_payload, a_users, a_ids = load_run(before)
    b_payload, b_users, b_ids = load_run(after)
    if not np.array_equal(a_ids, b_ids):
        raise ValueError(f"{before} and {after} were run on different test users")
    indices = bootstrap_indices(len(a_ids), draws, seed=0)
    pairs = [
        (f"chosen at {r:g}", chosen_label(a_payload, r), chosen_label(b_payload, r)) for r in rates
    ]
    labels = {p["policy"]: p["label"] for p in a_payload["points"] if p["target_rate"] is None}
    after_labels = {
        p["policy"]: p["label"] for p in b_payload["points"] if p["target_rate"] is None
    }
    pairs += [(name, labels.get(name), after_labels.get(name)) for name in REFERENCE_ROWS]
    lines = [
        f"| row | before ({before}) | after ({after}) | after − before [95% CI] |",
        "| --- | --- | --- | --- |",
    ]
    for name, a, b in pairs:
        if a is None or b is None:
            continue
        m, lo, hi = paired_difference(b_users[b], a_users[a], indices, 0.95)
        lines.append(
            f"| {name} | {a_users[a].mean():.4f} ({a}) | {b_users[b].mean():.4f} ({b}) | "
            f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path, help="a request-rate output folder")
    parser.add_argument("after", type=Path, help="another, on the same stream")
    parser.add_argument("--rates", default="0.1,0.2", help="target rates to compare")
    args = parser.parse_args(argv)
    print(compare(args.before, args.after, [float(r) for r in args.rates.split(",")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
