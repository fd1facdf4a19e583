"""The TTT4Rec paper's hyper-parameter figure on our data: NDCG@10 (full ranking) of TTT4Rec
over `initializer_range` × `mini_batch_size`, each cell trained to convergence by the model
table's harness (same split, protocol and early stopping).

    lsc4rec ttt-grid --dataset ml-100k --loss ce --jobs 2 --out runs/ttt_grid

Writes `ttt_grid.json`, `ttt_grid.md` (a table per protocol) and `ttt_grid.png` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from simulations import model_table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lsc4rec ttt-grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--init-ranges", type=float, nargs="+", default=[0.02, 0.1, 0.3])
    parser.add_argument("--mini-batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at once (1 thread each)")
    parser.add_argument("--out", default="runs/ttt_grid")
    args, rest = parser.parse_known_args(argv)
    # Everything else (dataset, loss, epochs, patience, …) is the model table's.
    args.table = model_table.parse_args(rest + ["--models", "ttt4rec", "--threads", "1"])
    return args


def cell(init: float, size: int, seed: int, table_args: argparse.Namespace) -> dict:
    """Train and test TTT4Rec with one (initializer_range, mini_batch_size)."""
    import torch

    from shared.batching import fixed_eval_negatives
    from shared.datasets import load_dataset
    from shared.splits import leave_one_out, split_stream

    torch.set_num_threads(1)
    args = argparse.Namespace(**vars(table_args))
    args.option = [f"ttt4rec:initializer_range={init}", f"ttt4rec:mini_batch_size={size}"]
    options = {"num_users": args.synthetic_users} if args.dataset == "synthetic" else {}
    dataset = load_dataset(args.dataset, **options)
    loo = leave_one_out(split_stream(dataset).train)
    negatives = fixed_eval_negatives(dataset.sequences, dataset.num_items, count=99, seed=1234)
    run = model_table.run_one("ttt4rec", seed, dataset, loo, negatives, args)
    return {"initializer_range": init, "mini_batch_size": size, **run}


def markdown(cells: list[dict], inits: list[float], sizes: list[int]) -> str:
    lines = []
    for protocol, title in model_table.PROTOCOLS.items():
        lines += [
            f"**TTT4Rec NDCG@10, {title}** (rows: initializer_range; columns: mini_batch_size)",
            "",
            "| initializer_range | " + " | ".join(f"mb = {s}" for s in sizes) + " |",
            "| --- |" + " --- |" * len(sizes),
        ]
        for init in inits:
            values = [_find(cells, init, s)[protocol]["NDCG@10"] for s in sizes]
            lines.append(f"| {init:g} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
        lines.append("")
    lines += ["| initializer_range | mini_batch_size | valid NDCG@10 (full) | best epoch "
              "| epochs run | minutes |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for c in cells:
        lines.append(f"| {c['initializer_range']:g} | {c['mini_batch_size']} "
                     f"| {c['valid_NDCG@10']:.4f} | {c['best_epoch']} | {c['epochs_run']} "
                     f"| {c['train_seconds'] / 60:.1f} |")  # fmt: skip
    best = max(cells, key=lambda c: c["valid_NDCG@10"])
    lines.append(f"\nBest on validation: initializer_range {best['initializer_range']:g}, "
                 f"mini_batch_size {best['mini_batch_size']}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def _find(cells: list[dict], init: float, size: int) -> dict:
    return next(c for c in cells if c["initializer_range"] == init and c["mini_batch_size"] == size)


def plot(cells: list[dict], inits: list[float], sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for init in inits:
        values = [_find(cells, init, s)["full"]["NDCG@10"] for s in sizes]
        ax.plot(range(len(sizes)), values, marker="o", label=f"initializer_range {init:g}")
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_xlabel("mini_batch_size")
    ax.set_ylabel("NDCG@10 (full ranking)")
    ax.set_title("TTT4Rec hyper-parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.jobs < 1:
        print("ttt_grid: error: --jobs must be >= 1", file=sys.stderr)
        return 2
    grid = [(i, s) for i in args.init_ranges for s in args.mini_batch_sizes]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(cell, i, s, args.seed, args.table) for i, s in grid]
        cells = []
        for (init, size), future in zip(grid, futures):
            cells.append(future.result())
            print(f"initializer_range {init:g}, mini_batch_size {size}: full NDCG@10 "
                  f"{cells[-1]['full']['NDCG@10']:.4f}", flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(cells, args.init_ranges, args.mini_batch_sizes)
    (out / "ttt_grid.md").write_text(text)
    settings = {**vars(args.table), "seed": args.seed}
    (out / "ttt_grid.json").write_text(json.dumps({"settings": settings, "cells": cells}, indent=2))
    plot(cells, args.init_ranges, args.mini_batch_sizes, out / "ttt_grid.png")
    print(text)
    print(f"wrote {out / 'ttt_grid.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
