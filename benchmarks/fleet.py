"""Live device fleet over loopback gRPC: throughput and request latency per worker count.

For each worker count the benchmark runs the same stream users as live devices (spawned
processes, one gRPC channel and one SRM each) against an in-process server, after a warm-up
fleet that loads every worker's SRM and opens its channel, and reports steps/s, requests/s,
request latency p50/p95 (client-side, retries included), requests ok/failed and NDCG@10.
With `--fault AFTER:DOWN_S` it adds one run at the largest worker count in which the server
is stopped after AFTER requests and restarted on the same port DOWN_S seconds later.
Prints a markdown table and writes JSON.

    python benchmarks/fleet.py --out runs/bench/fleet.json
    python benchmarks/fleet.py --workers 1 2 4 --users 32 --policy always --fault 40:1

Models: `--llm DIR --srm DIR --dataset NAME`, else the first of `runs/rr_ml100k`,
`runs/rr_synth` holding `llm/` and `srm/` folders, else untrained tiny models on synthetic
data (lists are valid, accuracy is meaningless; the timings still measure the plumbing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout

# (folder under runs/, data set it was trained on)
TRAINED = (("rr_ml100k", "ml-100k"), ("rr_synth", "synthetic"))


def find_models(args: argparse.Namespace) -> tuple[str, str, str]:
    """(generator folder, SRM folder, data set name) to benchmark; tiny ones if none exist."""
    if args.llm and args.srm:
        return args.llm, args.srm, args.dataset
    for folder, dataset in TRAINED:
        root = REPO_ROOT / "runs" / folder
        if (root / "llm" / "generator.json").is_file() and (root / "srm").is_dir():
            return str(root / "llm"), str(root / "srm"), dataset
    return (*tiny_models(Path(tempfile.mkdtemp(prefix="fleet-bench-"))), "synthetic")


def tiny_models(folder: Path) -> tuple[str, str]:
    """Untrained tiny generator and TTT4Rec on the default synthetic catalogue."""
    import torch

    from cloud.config import BackboneConfig, GeneratorConfig
    from cloud.generator import CandidateGenerator
    from seqrec.checkpoint import save_srm
    from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig
    from shared.datasets import load_dataset
    from shared.splits import split_stream

    dataset = load_dataset("synthetic", seed=0)
    split = split_stream(dataset)
    backbone = BackboneConfig(d_model=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_ff=64)
    generator = CandidateGenerator.create(
        GeneratorConfig(backbone=backbone), split.train, dataset.num_items
    )
    generator.save_pretrained(folder / "llm")
    torch.manual_seed(0)
    save_srm(TTT4Rec(TTT4RecConfig(num_items=dataset.num_items)).eval(), folder / "srm")
    return str(folder / "llm"), str(folder / "srm")


def load_stream(dataset_name: str, users: int, window: int):
    """The first `users` stream users of the data set's test stream."""
    from shared.datasets import load_dataset
    from shared.splits import split_stream
    from simulations.replay import ReplayStream, stream_from_split

    options = {"seed": 0} if dataset_name == "synthetic" else {}
    stream = stream_from_split(split_stream(load_dataset(dataset_name, **options), window))
    keep = slice(0, min(users, stream.num_users))
    return ReplayStream(
        "test", stream.users[keep], stream.sequences[keep], stream.starts[keep], window
    )


def run_level(stream, config, fault: str | None, generator) -> dict:
    """One worker count: warm the pool, then time the fleet (with the fault drill if asked)."""
    from cloud.server import ServerConfig, create_server
    from simulations.fleet import FaultPlan, fleet_pool, run_fleet, run_fleet_with_restart

    server, port = create_server(generator, "127.0.0.1:0", ServerConfig(grace_s=1.0))
    config = replace(config, target=f"127.0.0.1:{port}")
    try:
        with fleet_pool(config) as pool:
            warm = load_stream_prefix(stream, config.workers)
            run_fleet(warm, config, pool)  # loads each worker's SRM and opens its channel
            if fault is None:
                result = run_fleet(stream, config, pool)
            else:
                after, down = fault.split(":")
                plan = FaultPlan(after_requests=int(after), down_s=float(down))
                result = run_fleet_with_restart(generator, stream, config, plan, pool=pool)
    finally:
        server.shutdown(grace_s=0)
    row = {"workers": config.workers, "fault": fault, **result.summary()}
    row["events"] = result.events
    return row


def load_stream_prefix(stream, users: int):
    """The first `users` rows of a stream (the warm-up fleet)."""
    from simulations.replay import ReplayStream

    keep = slice(0, max(1, min(users, stream.num_users)))
    return ReplayStream(
        "test", stream.users[keep], stream.sequences[keep], stream.starts[keep], stream.window
    )


def _shown(path: str) -> str:
    """A model folder as written to JSON: relative to the checkout, never this machine's path."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return "tiny untrained (temporary folder)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default=None, help="generator folder")
    parser.add_argument("--srm", default=None, help="SRM folder")
    parser.add_argument("--dataset", default="ml-100k", help="data set of --llm/--srm")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--users", type=int, default=32, help="devices per fleet")
    parser.add_argument("--window", type=int, default=10, help="stream steps per device (T)")
    parser.add_argument("--policy", default="always", help="request policy spec")
    parser.add_argument("--deadline-ms", type=float, default=2000.0, help="per-attempt deadline")
    parser.add_argument("--fault", default=None, metavar="AFTER:DOWN_S", help="add a fault run")
    parser.add_argument("--out", default="runs/bench/fleet.json", help="JSON output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    from cloud.loading import load_generator
    from simulations.fleet import FleetConfig, summary_table

    args = parse_args(argv)
    torch.set_num_threads(1)  # the server's model; devices set their own
    llm, srm, dataset = find_models(args)
    generator = load_generator(llm)
    stream = load_stream(dataset, args.users, args.window)
    base = FleetConfig(
        srm_dir=srm,
        policy=args.policy,
        deadline_ms=args.deadline_ms,
        total_timeout_ms=2 * args.deadline_ms,
    )
    rows = []
    for workers in args.workers:
        rows.append(run_level(stream, replace(base, workers=workers), None, generator))
        print(summary_table(rows[-1:]).splitlines()[-1], flush=True)
    if args.fault:
        rows.append(
            run_level(stream, replace(base, workers=max(args.workers)), args.fault, generator)
        )
    print(summary_table(rows))
    meta = {
        "llm": _shown(llm),
        "srm": _shown(srm),
        "dataset": dataset,
        "users": stream.num_users,
        "window": stream.window,
        "policy": args.policy,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "levels": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
