"""The replay's SRM tables, user by user against batched, on the MovieLens-100k test stream.

For each device model (untrained, default sizes: the cost does not depend on the weights;
or `--srm DIR …`), the tables of `--users` users (every held list's logits at every step,
each click's surprise, the full-catalogue ranks) are computed twice in one run: by the device
runner one user and one call at a time, and by `compute_srm_tables`' batched path (chunks of
`--chunk` users). Random lists of 50 stand in for the generator's (the tables' cost does not
depend on which items they hold). Prints a table, writes JSON, and says how far the two are
apart: the largest logit gap, and how many full-catalogue ranks changed (float32 sums in
another order can reorder near-ties, which an untrained model has many of).

    python benchmarks/replay_tables.py --users 200 --out runs/bench/replay_tables.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from seqrec.checkpoint import load_srm
from seqrec.models import build_model
from seqrec.runners import make_runner
from shared.datasets import load_dataset
from shared.splits import split_stream
from simulations.replay import compute_srm_tables, stream_from_split
from simulations.replay.lists import FreshLists

MODELS = ("ttt4rec", "gru4rec", "sasrec")


class OneUserAtATime:
    """The device runner behind an adapter the tables cannot batch: one user, one call."""

    def __init__(self, runner) -> None:
        self.runner, self.num_items = runner, runner.num_items

    def __getattr__(self, name):
        return getattr(self.runner, name)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--srm", nargs="*", default=None, help="SRM folders (default: untrained)")
    parser.add_argument("--users", type=int, default=200, help="stream users timed")
    parser.add_argument("--chunk", type=int, default=1024, help="users per batched chunk")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/replay_tables.json"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_dataset("ml-100k")
    full = stream_from_split(split_stream(dataset))
    rows = slice(0, min(args.users, full.num_users))
    stream = dataclasses.replace(
        full, users=full.users[rows], sequences=full.sequences[rows], starts=full.starts[rows]
    )
    rng = np.random.default_rng(0)
    items = rng.integers(1, dataset.num_items + 1, size=(stream.num_users, stream.window, 50))
    lists = FreshLists(items, np.zeros(items.shape, np.float32), "random", 50)
    if args.srm:
        models = {folder: load_srm(folder) for folder in args.srm}
    else:
        models = {name: build_model(name, num_items=dataset.num_items) for name in MODELS}
    results = []
    for label, model in models.items():
        model = model.eval()
        start = time.perf_counter()
        alone = compute_srm_tables(
            OneUserAtATime(make_runner(model)), stream, lists, dataset.num_items
        )
        middle = time.perf_counter()
        batched = compute_srm_tables(
            make_runner(model), stream, lists, dataset.num_items, chunk_users=args.chunk
        )
        end = time.perf_counter()
        scale = float(np.abs(alone.logits).max()) or 1.0
        results.append({
            "model": label,
            "users": stream.num_users,
            "one_user_at_a_time_s": middle - start,
            "batched_s": end - middle,
            "speedup": (middle - start) / (end - middle),
            "full_ranks_changed": int((alone.full_ranks != batched.full_ranks).sum()),
            "full_ranks": int(alone.full_ranks.size),
            "max_logit_gap_relative": float(np.abs(alone.logits - batched.logits).max() / scale),
        })  # fmt: skip
    lines = [
        f"SRM tables on the ml-100k test stream, {stream.num_users} users × {stream.window} "
        "steps, lists of 50, one thread",
        "",
        "| model | one user at a time s | batched s | speed-up | full ranks changed | "
        "max logit gap (relative) |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['one_user_at_a_time_s']:.1f} | {r['batched_s']:.1f} | "
            f"{r['speedup']:.1f}× | {r['full_ranks_changed']} of {r['full_ranks']} | "
            f"{r['max_logit_gap_relative']:.1e} |"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"results": results, "machine": platform.platform(), "args": vars(args)}
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
