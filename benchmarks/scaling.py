"""The pipeline's cost against the number of users: each stage's wall time and peak memory
at several sizes of the synthetic data set, a log-log plot, and the fitted exponent per stage.

Stages (each in a fresh process, so its peak memory is its own; worker processes included):

- `data`: the synthetic data set (`--synthetic-simulator batched`) and its split;
- `train-srm`, `train-llm`: one epoch of the device model (GRU4Rec, CE) and of the item LM,
  the `lsc4rec train-srm/train-llm … --epochs 1` commands (validation included);
- `train-srm-ddp`: the same epoch data-parallel, two processes under torchrun (gloo);
- `lists`: the generator's fresh list for every (user, step) of both streams;
- `tables`: the SRM tables of both streams (the lists read from the cache);
- `sweep`: the request-rate experiment's sweep and outputs (lists and tables from the cache).

`lists`, `tables` and `sweep` together are `lsc4rec experiment request-rate` at that size,
split where it writes its cache. They use `--llm/--srm` when given (the cost does not depend
on how well the models rank), else the models the train stages wrote at the same size.

    python benchmarks/scaling.py --users 1000 10000 --items 10000 --out runs/bench/scaling
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ("data", "train-srm", "train-srm-ddp", "train-llm", "lists", "tables", "sweep")
SWEEP_ARGS = ("--auc-bootstrap", "0", "--bootstrap", "200")  # the table's settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--items", type=int, default=10000, help="items of the data set")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated")
    parser.add_argument("--llm", default=None, help="generator folder for lists/tables/sweep")
    parser.add_argument("--srm", default=None, help="SRM checkpoint for lists/tables/sweep")
    parser.add_argument("--workers", type=int, default=1, help="--table-workers of the replay")
    parser.add_argument("--work", default=None, help="models and caches (default: OUT/work)")
    parser.add_argument("--out", default="runs/bench/scaling", help="folder: JSON, PNG")
    parser.add_argument("--merge", action="store_true", help="add to OUT/scaling.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def data_args(users: int, items: int) -> list[str]:
    return [
        "--dataset", "synthetic", "--synthetic-users", str(users),
        "--synthetic-items", str(items), "--synthetic-simulator", "batched",
    ]  # fmt: skip


# ---------------------------------------------------------------- one stage, one process


def run_stage(stage: str, users: int, args: argparse.Namespace, work: Path) -> dict:
    """Run `stage` at `users` in a fresh process; its wall time and peak RSS (the largest
    of the process and every worker it waited for)."""
    folder = work / f"u{users}"
    folder.mkdir(parents=True, exist_ok=True)
    data = data_args(users, args.items)
    cli = [sys.executable, "-m", "cli.main"]
    models = [str(folder / "llm"), str(folder / "srm")]
    llm, srm = args.llm or models[0], args.srm or models[1]
    if stage == "train-srm":
        command = [*cli, "train-srm", "--model", "gru4rec", "--loss", "ce", *data,
                   "--epochs", "1", "--threads", "1", "--out", models[1]]  # fmt: skip
    elif stage == "train-srm-ddp":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node=2", "-m", "cli.main", "train-srm", "--model", "gru4rec",
                   "--loss", "ce", *data, "--epochs", "1", "--threads", "1",
                   "--out", str(folder / "srm_ddp")]  # fmt: skip
    elif stage == "train-llm":
        command = [*cli, "train-llm", *data, "--epochs", "1", "--threads", "1",
                   "--out", models[0]]  # fmt: skip
    else:  # data, lists, tables, sweep: this script's child mode
        command = [sys.executable, __file__, "--child", stage, "--users", str(users),
                   "--items", str(args.items), "--llm", llm, "--srm", srm,
                   "--workers", str(args.workers), "--work", str(work)]  # fmt: skip
    started = time.perf_counter()
    with open(folder / f"{stage}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # usage: this process and its waited kids
    wall = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{stage} at {users} users failed; see {folder / f'{stage}.log'}")
    row = {"stage": stage, "users": users, "process_seconds": round(wall, 2)}
    row["peak_mb"] = round(usage.ru_maxrss / 1024, 1)  # KB on Linux
    timed = folder / f"{stage}.json"
    if timed.is_file():  # the child's own timing of the stage's work (imports excluded)
        row.update(json.loads(timed.read_text()))
    row.setdefault("seconds", row["process_seconds"])
    return row


def child(args: argparse.Namespace) -> int:
    """The stage's work in this process; writes its timing beside the stage's log."""
    import torch

    from shared.datasets import load_dataset
    from shared.splits import split_stream

    torch.set_num_threads(1)
    folder = Path(args.work) / f"u{args.users[0]}"
    started = time.perf_counter()
    dataset = load_dataset("synthetic", num_users=args.users[0], num_items=args.items, batched=True)
    split = split_stream(dataset, test_window=10)
    result: dict = {"data_seconds": round(time.perf_counter() - started, 2)}
    if args.child == "data":
        result["seconds"] = result["data_seconds"]
        result["clicks"] = int(sum(len(s) for s in dataset.sequences))
    else:
        result.update(replay_stage(args, dataset, split, folder))
    (folder / f"{args.child}.json").write_text(json.dumps(result))
    return 0


def experiment_configs(args: argparse.Namespace):
    """The sweep and replay configs `lsc4rec experiment request-rate` builds from its defaults
    (the same points), with `SWEEP_ARGS` and the benchmark's workers."""
    from cli.experiment import _build_configs
    from cli.main import build_parser

    command = ["experiment", "request-rate", *data_args(args.users[0], args.items),
               "--llm", args.llm, "--srm", args.srm, *SWEEP_ARGS,
               "--table-workers", str(args.workers)]  # fmt: skip
    return _build_configs(build_parser("experiment").parse_args(command))


def replay_stage(args, dataset, split, folder: Path) -> dict:
    """lists, tables or sweep: the experiment's work up to the stage read from the cache,
    the stage itself timed."""
    from cloud.loading import load_generator
    from seqrec.checkpoint import load_srm
    from simulations.replay import dataset_label, stream_from_split
    from simulations.replay.lists import load_or_generate_lists
    from simulations.request_rate import prepare_streams, write_outputs
    from simulations.request_rate.experiment import run_request_rate

    generator = load_generator(args.llm)
    model = load_srm(args.srm)
    sweep, config = experiment_configs(args)
    cache = folder / "cache"
    label = dataset_label(dataset, 0)
    if args.child == "lists":  # each stage computes its own part afresh
        shutil.rmtree(cache, ignore_errors=True)
    if args.child == "tables":
        for path in cache.glob("srm-*.npz"):
            path.unlink()
    started = time.perf_counter()
    if args.child == "lists":
        for role in ("valid", "test"):
            load_or_generate_lists(generator, stream_from_split(split, role), config, cache, label)
        return {"seconds": round(time.perf_counter() - started, 2)}
    valid, test = prepare_streams(split, generator, model, config, cache, label)
    prepared = time.perf_counter()
    if args.child == "tables":
        return {"seconds": round(prepared - started, 2)}
    experiment = run_request_rate(test, valid, sweep)
    write_outputs(experiment, folder / "request_rate", sweep, {})
    return {"seconds": round(time.perf_counter() - prepared, 2), "points": len(experiment.rows)}


# ---------------------------------------------------------------- the summary


def exponents(rows: list[dict], key: str) -> dict[str, float]:
    """Per stage, the slope of log(`key`) on log(users) (least squares; >= 2 sizes)."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        points = sorted((r["users"], r[key]) for r in rows if r["stage"] == stage)
        if len({u for u, _ in points}) >= 2:
            x, y = np.log([p[0] for p in points]), np.log([max(p[1], 1e-3) for p in points])
            out[stage] = round(float(np.polyfit(x, y, 1)[0]), 3)
    return out


def print_table(rows: list[dict], time_exp: dict, memory_exp: dict) -> None:
    sizes = sorted({r["users"] for r in rows})
    header = ["stage", *[f"{u:,} users: s / peak MB" for u in sizes], "time exponent"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        cells = [stage]
        for u in sizes:
            found = [r for r in rows if r["stage"] == stage and r["users"] == u]
            cells.append(f"{found[0]['seconds']:.1f} / {found[0]['peak_mb']:.0f}" if found else "—")
        cells.append(f"{time_exp.get(stage, float('nan')):.2f}")
        print("| " + " | ".join(cells) + " |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        points = sorted(
            (r["users"], r["seconds"], r["peak_mb"]) for r in rows if r["stage"] == stage
        )
        users = [p[0] for p in points]
        axes[0].plot(users, [p[1] for p in points], marker="o", label=stage)
        axes[1].plot(users, [p[2] for p in points], marker="o", label=stage)
    for axis, label in zip(axes, ("wall time (s)", "peak memory (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("users")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(
            f"unknown stages: {', '.join(sorted(unknown))}; valid: {', '.join(STAGES)}"
        )
    path = out / "scaling.json"
    rows = json.loads(path.read_text())["rows"] if args.merge and path.is_file() else []
    for users in sorted(args.users):
        for stage in stages:
            row = run_stage(stage, users, args, work)
            rows = [r for r in rows if (r["stage"], r["users"]) != (stage, users)] + [row]
            print(
                f"{stage} at {users:,} users: {row['seconds']:.1f} s, {row['peak_mb']:.0f} MB",
                flush=True,
            )
            payload = {"rows": rows, "items": args.items, "workers": args.workers,
                       "cpus": os.cpu_count(), "platform": platform.platform()}  # fmt: skip
            path.write_text(json.dumps(payload, indent=2))
    time_exp, memory_exp = exponents(rows, "seconds"), exponents(rows, "peak_mb")
    payload.update(time_exponents=time_exp, memory_exponents=memory_exp)
    path.write_text(json.dumps(payload, indent=2))
    print_table(rows, time_exp, memory_exp)
    print("peak-memory exponents:", memory_exp)
    plot(rows, out / "scaling.png")
    print(f"wrote {path} and {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
