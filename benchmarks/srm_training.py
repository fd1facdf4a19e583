"""Seconds per SRM training epoch: one example per prefix vs whole windows (sequence-level).

Both trainers cover the same (history → next click) pairs of the training sequences once per
epoch, with the same model, loss (BCE 1:4), optimiser and thread count:

- `prefix`: one encoded history of up to `max_len` clicks per pair, 256 pairs per Adam step
  (the old trainer). Its epoch is long, so `--prefix-batches` steps are timed and the epoch
  time is their mean times the number of steps in an epoch.
- `sequence`: windows of `max_len` clicks, one forward pass per window giving every pair's
  logits, 32 windows per Adam step; one whole epoch is timed. With the default stride
  (`max_len / 2`) a pair near a window's start keeps at least `max_len / 2` clicks of history
  instead of `max_len` (the JSON gives the share of pairs whose history is shorter).

Rows: each of `--models` (default SASRec and TTT4Rec), TTT4Rec at each `--mini-batch-sizes`
(the paper's 1 and the default 16). `--models din` shows why DIN trains per prefix: its target
attention runs once per (position, candidate, earlier click), so a window costs what its
prefixes cost.
Prints a table and writes JSON.

    python benchmarks/srm_training.py --out runs/bench/srm_training.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from seqrec.losses import batch_loss
from seqrec.models import build_model
from shared.batching import NextItemBatcher, WindowBatcher
from shared.datasets import load_dataset
from shared.splits import split_stream


@dataclass
class Row:
    model: str
    trainer: str
    pairs_per_epoch: int
    steps_per_epoch: int
    seconds_per_epoch: float
    timed_steps: int
    speedup_vs_prefix: float = float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--mini-batch-sizes", type=int, nargs="+", default=[16, 1])
    parser.add_argument(
        "--models", nargs="+", default=["sasrec", "ttt4rec"], help="sasrec, ttt4rec, gru4rec, din"
    )
    parser.add_argument("--prefix-batches", type=int, default=30, help="timed prefix steps")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/srm_training.json"))
    return parser.parse_args(argv)


def train_steps(model, batches, limit: int | None = None) -> tuple[int, float]:
    """Adam steps as the trainer takes them; returns (steps, seconds) after one warm-up step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    steps, start = 0, None
    for batch in batches:
        loss, _ = batch_loss(model, batch, "bce")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if start is None:  # the first step pays one-off costs (allocations, lazy init)
            start = time.perf_counter()
            continue
        steps += 1
        if limit is not None and steps >= limit:
            break
    return steps, time.perf_counter() - start


def time_variant(label: str, make_model, sequences, num_items: int, args) -> list[Row]:
    prefix = NextItemBatcher(sequences, num_items, max_len=args.max_len, seed=args.seed)
    window = WindowBatcher(sequences, num_items, max_len=args.max_len, batch_size=32,
                           seed=args.seed)  # fmt: skip
    pairs = len(prefix.examples)
    steps, seconds = train_steps(make_model(), prefix, limit=args.prefix_batches)
    prefix_row = Row(label, "prefix", pairs, len(prefix), seconds / steps * len(prefix), steps)
    steps, seconds = train_steps(make_model(), window)
    # The warm-up step is not timed: scale the timed steps to the whole epoch.
    sequence_row = Row(label, "sequence", pairs, len(window), seconds / steps * len(window), steps)
    sequence_row.speedup_vs_prefix = prefix_row.seconds_per_epoch / sequence_row.seconds_per_epoch
    prefix_row.speedup_vs_prefix = 1.0
    return [prefix_row, sequence_row]


def short_history_share(sequences, args) -> float:
    """Share of pairs whose in-window history is shorter than its per-prefix history."""
    window = WindowBatcher(
        sequences, 1 + max(int(s.max()) for s in sequences), max_len=args.max_len
    )
    short = total = 0
    for seq, assigned in zip(window.sequences, window.assigned):
        if assigned is None:
            continue
        positions = np.arange(len(seq) - 1)
        in_window = positions - assigned + 1
        per_prefix = np.minimum(positions + 1, args.max_len)
        short += int((in_window < per_prefix).sum())
        total += len(positions)
    return short / total


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    sequences = split_stream(dataset).train

    def maker(name: str, **options):
        def make():
            torch.manual_seed(args.seed)
            return build_model(name, num_items=dataset.num_items, hidden_size=args.hidden_size,
                               max_len=args.max_len, **options)  # fmt: skip

        return make

    rows = []
    for name in args.models:
        if name != "ttt4rec":
            rows += time_variant(name, maker(name), sequences, dataset.num_items, args)
            continue
        for size in args.mini_batch_sizes:
            make = maker("ttt4rec", mini_batch_size=size)
            rows += time_variant(f"ttt4rec mb={size}", make, sequences, dataset.num_items, args)
    sequence_seconds = {r.model: r.seconds_per_epoch for r in rows if r.trainer == "sequence"}
    ttt = [f"ttt4rec mb={s}" for s in args.mini_batch_sizes if "ttt4rec" in args.models]
    ratios = {
        f"{a} / {b} (sequence)": sequence_seconds[a] / sequence_seconds[b]
        for a in ttt
        for b in ttt
        if a != b and a.endswith("mb=1")
    }
    return {
        "rows": [asdict(r) for r in rows],
        "mini_batch_ratios": ratios,
        "short_history_share": short_history_share(sequences, args),
        "goal": {
            "sequence speedup >= 10x": all(
                r.speedup_vs_prefix >= 10 for r in rows if r.trainer == "sequence"
            ),
            "ttt4rec mb=1 <= 3x mb=16": all(v <= 3 for v in ratios.values()),
        },  # fmt: skip
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
            "dataset": args.dataset,
            "processor": platform.processor() or platform.machine(),
        },
    }


def print_table(result: dict) -> None:
    print("| model | trainer | pairs/epoch | steps/epoch | s/epoch | timed steps | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        print(
            f"| {r['model']} | {r['trainer']} | {r['pairs_per_epoch']:,} | {r['steps_per_epoch']} "
            f"| {r['seconds_per_epoch']:.1f} | {r['timed_steps']} | {r['speedup_vs_prefix']:.1f}x |"
        )
    for name, value in result["mini_batch_ratios"].items():
        print(f"{name}: {value:.2f}x")
    print(f"pairs with a shorter history in their window: {result['short_history_share']:.1%}")
    print(f"goals: {result['goal']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
