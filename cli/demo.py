"""`lsc4rec demo`: from a fresh clone to results on MovieLens-100k.

The demo runs the same subcommands a user would, in order, with settings sized for a few
minutes on 2 CPU cores; every stage prints its command line (to reproduce it alone) and what it
did, and the last one where the results are. The stages are parsed by the subcommands' own
parsers and run by their `run` functions (the demo never re-enters `cli.main`):

    1. data         MovieLens-100k from the recbole wheel; statistics
    2. train-llm    the cloud candidate generator (a decoder-only item LM, early stopping)
    3. train-srm    the device model, sequence-level with early stopping: GRU4Rec stepping
                    its state by default, the one model within a device's 0.1 ms per click
                    (README, "Device models at a per-click budget"); `--srm-model ttt4rec`
                    for the TTT4Rec abstract's model (trained alone: LSC4Rec's collaborative
                    stage lowered its accuracy in every setting measured, see the README)
    4. experiment   the request-rate sweep (replay), table + plot
    5. devices      the real gRPC server and a short live device fleet against it, running
                    the device bundle the experiment chose (its policy, α and SRM graphs)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli import data, devices, experiment, train_llm, train_srm
from shared.manifest import read_manifest
from shared.metrics import ndcg

STAGE_MODULES = (data, train_llm, train_srm, experiment, devices)
# the device models the demo can ship, with their training options
DEVICE_MODELS = {
    "gru4rec": ["--loss", "ce"],  # the frontier's choice at 0.1 ms per click
    "ttt4rec": ["--option", "initializer_range=0.1"],  # the TTT4Rec abstract's model
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the end-to-end demo on MovieLens-100k")
    parser.add_argument("--out", default="runs/demo", help="folder for models, tables and plots")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument("--dataset", default="ml-100k", help="ml-100k (default) or synthetic")
    parser.add_argument(
        "--llm-epochs", type=int, default=12, help="most generator epochs (patience 3)"
    )
    parser.add_argument(
        "--srm-model",
        choices=sorted(DEVICE_MODELS),
        default="gru4rec",
        help="the device model (default: the most accurate within 0.1 ms per click)",
    )
    parser.add_argument(
        "--srm-epochs", type=int, default=20, help="most device-model epochs (patience 3)"
    )
    parser.add_argument("--fleet-users", type=int, default=100, help="users in the live fleet")
    parser.add_argument("--skip-fleet", action="store_true", help="stop after the sweep")
    parser.set_defaults(func=run)


def stages(args: argparse.Namespace, out: Path) -> list[tuple[str, list[str]]]:
    """The subcommands the demo runs, as argument lists for `lsc4rec`."""
    data = ["--dataset", args.dataset]
    seed = ["--seed", str(args.seed)]
    llm, srm = str(out / "llm"), str(out / "srm")
    return [
        ("data", ["data", "stats", *data]),
        (
            "train-llm",
            [
                "train-llm",
                *data,
                "--out",
                llm,
                "--epochs",
                str(args.llm_epochs),
                "--patience",
                "3",
                *seed,
            ],
        ),
        (
            "train-srm",
            [
                "train-srm",
                "--model",
                args.srm_model,
                *data,
                "--out",
                srm,
                "--epochs",
                str(args.srm_epochs),
                "--patience",
                "3",
                *DEVICE_MODELS[args.srm_model],
                *seed,
            ],
        ),
        (
            "experiment",
            [
                "experiment",
                "request-rate",
                *data,
                "--llm",
                llm,
                "--srm",
                srm,
                "--out",
                str(out / "request_rate"),
                "--cache-dir",
                str(out / "cache"),
                "--auc-bootstrap",
                "100",
                # the goal's rates (the curve's far end, 0.5 and 0.8, costs a third of the sweep)
                "--rates",
                "0.05,0.1,0.2,0.3",
                "--export-device",
                str(out / "device"),
                "--device-rate",
                "0.1",
                *seed,
            ],
        ),
    ]


def stage_parser() -> argparse.ArgumentParser:
    """A parser of the demo's stages, built from the subcommands' own `add_parser`."""
    parser = argparse.ArgumentParser(prog="lsc4rec")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in STAGE_MODULES:
        module.add_parser(subparsers)
    return parser


def run(args: argparse.Namespace) -> int:
    parser = stage_parser()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = stages(args, out)
    if not args.skip_fleet:
        plan.append(("devices", fleet_stage(args, out)))
    timings = []
    for number, (name, argv) in enumerate(plan, start=1):
        print(f"\n== {number}/{len(plan)} {name}: lsc4rec {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        stage_args = parser.parse_args(argv)
        status = int(stage_args.func(stage_args) or 0)
        timings.append((name, time.perf_counter() - start))
        if status != 0:
            print(f"demo: stage {name} failed (exit {status})")
            return status
    print_summary(out, timings)
    return 0


def fleet_stage(args: argparse.Namespace, out: Path) -> list[str]:
    """A short live fleet, running the bundle the experiment chose, against a real server that
    the `devices` command starts itself."""
    return [
        "devices",
        "--dataset",
        args.dataset,
        "--llm",
        str(out / "llm"),
        "--bundle",
        str(out / "device"),
        "--users",
        str(args.fleet_users),
        "--workers",
        "2",
        "--out",
        str(out / "fleet"),
        "--seed",
        str(args.seed),
    ]


def live_against_replay(out: Path) -> str:
    """The fleet's bundle, live, next to the experiment's replay of the same policy for the
    same users: request rate and NDCG@10 (a markdown table; "" when either is missing)."""
    import json

    import numpy as np

    fleet_path, records_path = out / "fleet" / "fleet.json", out / "request_rate" / "records.npz"
    if not (fleet_path.exists() and records_path.exists() and (out / "device").is_dir()):
        return ""
    notes = read_manifest(out / "device").get("notes", {})
    devices = json.loads(fleet_path.read_text())["devices"]
    records = np.load(records_path)
    point = list(records["labels"]).index(notes["replay_label"])
    rows = {int(u): i for i, u in enumerate(records["users"])}
    index = [rows[d["user"]] for d in devices]
    live_ranks = np.array([[np.inf if r is None else r for r in d["ranks"]] for d in devices])
    lines = [
        f"Live devices ran the bundle {out / 'device'}: {notes['replay_label']} "
        f"(chosen at target rate {notes['target_rate']:g}), on {len(devices)} users.",
        "",
        "| run | request rate | NDCG@10 |",
        "| --- | --- | --- |",
        f"| replay (request-rate experiment) | "
        f"{records['requested'][point][index].mean():.3f} | "
        f"{ndcg(records['ranks'][point][index], 10).mean():.4f} |",
        f"| live fleet (gRPC, onnxruntime) | "
        f"{np.mean([d['requested'] for d in devices]):.3f} | {ndcg(live_ranks, 10).mean():.4f} |",
    ]
    return "\n".join(lines)


def print_summary(out: Path, timings: list[tuple[str, float]]) -> None:
    print("\n== results")
    table = out / "request_rate" / "request_rate.md"
    if table.exists():
        print(table.read_text())
    print("| stage | seconds |\n| --- | --- |")
    for name, seconds in timings:
        print(f"| {name} | {seconds:.0f} |")
    print(f"| total | {sum(s for _, s in timings):.0f} |")
    comparison = live_against_replay(out)
    if comparison:
        print(f"\n{comparison}\n")
    print(f"\nplot: {out / 'request_rate' / 'request_rate.png'}")
    print(f"tables: {out / 'request_rate'}; models: {out / 'llm'}, {out / 'srm'}")
