"""Replay sweep cost on MovieLens-100k: the one-off caches, then 8 policy points.

Stages, each timed on its own (torch on one thread):

- `lists (generate)`: the generator's fresh list for every (user, step) of the validation and
  test streams (943 users × 10 steps each), written to the npz cache — paid once per model;
- `SRM tables`: stepping the SRM runner through every user's clicks, scoring every list —
  paid once per model pair, also cached;
- `load caches`: reading both back from disk;
- `sweep (8 points)`: calibrating on the validation stream and replaying 8 policy points on
  the test stream (never, always, random 0.1 / 0.3, periodic m=5, consistency[rank_diff] at
  0.1, consistency[kendall] at 0.3, learned at 0.2) — the budget of docs/design.md §5 is ≤ 60 s;
- `DeviceSession replay (1 point)`: random(0.3) through one `DeviceSession` per user, the
  reference path, side by side with the fast replay of the same point (ratio).

Without `--llm/--srm` it builds an untrained generator and TTT4Rec of the default sizes:
the timings do not depend on how well the models rank.

    python benchmarks/replay_sweep.py --llm runs/demo/llm --srm runs/demo/srm \\
        --out runs/bench/replay_sweep.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from device.fusion import RankSigmoidFusion
from device.policies import (
    AlwaysPolicy,
    ConsistencyPolicy,
    LearnedPolicy,
    NeverPolicy,
    PeriodicPolicy,
    RandomPolicy,
)
from shared.datasets import load_dataset
from shared.splits import split_stream
from simulations.replay import (
    ReplayConfig,
    dataset_label,
    prepare_replay,
    replay,
    replay_sessions,
    stream_from_split,
)
from simulations.request_rate import calibrate_on_stream, fit_learned, measure_table

BUDGET_SWEEP_S = 60.0  # 8 policy points after the lists are cached (docs/design.md §5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default=None, help="generator folder (default: untrained)")
    parser.add_argument("--srm", default=None, help="SRM checkpoint (default: untrained)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-sessions", action="store_true", help="no DeviceSession timing")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/replay_sweep.json"))
    return parser.parse_args(argv)


def load_models(args: argparse.Namespace, dataset, split):
    """The given models, or untrained ones of the default sizes."""
    from cloud.config import GeneratorConfig
    from cloud.generator import CandidateGenerator
    from cloud.loading import load_generator
    from seqrec.checkpoint import load_srm
    from seqrec.models import build_model

    if args.llm:
        generator = load_generator(args.llm)
    else:
        generator = CandidateGenerator.create(GeneratorConfig(), split.train, dataset.num_items)
    if args.srm:
        return generator, load_srm(args.srm)
    torch.manual_seed(0)
    return generator, build_model("ttt4rec", num_items=dataset.num_items).eval()


def timed(stages: dict[str, float], name: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
    return out


def prepare(generator, model, split, label: str, cache: str, stages: dict[str, float]):
    """Both streams' replay data; `stages` gets each stage's seconds."""
    from simulations.replay import load_or_compute_srm_tables, load_or_generate_lists

    config, resume, data = ReplayConfig(), {}, {}
    for role in ("valid", "test"):
        stream = stream_from_split(split, role)
        lists = timed(
            stages,
            "lists",
            load_or_generate_lists,
            generator,
            stream,
            config,
            cache,
            label,
            progress=True,
        )
        num_items = model.config.num_items if role == "test" else 0
        timed(
            stages,
            "SRM tables",
            load_or_compute_srm_tables,
            model,
            stream,
            lists,
            num_items,
            cache,
            resume,
            progress=True,
        )
    for role in ("valid", "test"):  # the sweep's own start: everything from the disk cache
        stream = stream_from_split(split, role)
        data[role] = timed(
            stages,
            "load caches",
            prepare_replay,
            stream,
            generator,
            model,
            config,
            cache,
            label,
            full_ranking=role == "test",
        )
    return data["valid"], data["test"]


def sweep(valid, test) -> list[dict]:
    """Calibrate and replay the 8 points; per point its seconds, rate and NDCG@10."""
    fusion = RankSigmoidFusion()
    points = [("never", NeverPolicy), ("always", AlwaysPolicy)]
    points += [
        ("random(0.1)", lambda: RandomPolicy(p=0.1)),
        ("random(0.3)", lambda: RandomPolicy(p=0.3)),
    ]
    points += [("periodic(5)", lambda: PeriodicPolicy(m=5))]
    for measure, rate in (("rank_diff", 0.1), ("kendall", 0.3)):
        points.append((f"consistency[{measure}]@{rate}", _consistency(valid, measure, rate)))
    points.append(("learned@0.2", _learned(valid, fusion, 0.2)))
    rows = []
    for name, make in points:
        start = time.perf_counter()
        result = replay(test, make(), fusion)
        seconds = time.perf_counter() - start
        summary = result.summary()
        rows.append(
            {
                "point": name,
                "seconds": seconds,
                "rate": summary["request_rate"],
                "NDCG@10": summary["NDCG@10"],
            }
        )
    return rows


def _consistency(valid, measure: str, rate: float):
    def make() -> ConsistencyPolicy:
        rule, _ = calibrate_on_stream(measure_table(valid, measure), rate)
        return ConsistencyPolicy(measure, threshold=rule.threshold, tie_prob=rule.tie_prob)

    return make


def _learned(valid, fusion, rate: float):
    def make() -> LearnedPolicy:
        model, table, _ = fit_learned(valid, fusion)
        rule, _ = calibrate_on_stream(table, rate)
        return LearnedPolicy(model=model, threshold=rule.threshold, tie_prob=rule.tie_prob)

    return make


def session_ratio(test) -> dict:
    """random(0.3): fast replay vs one DeviceSession per user, same records."""
    policy = RandomPolicy(p=0.3)
    start = time.perf_counter()
    fast = replay(test, policy)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = replay_sessions(test, policy)
    slow_s = time.perf_counter() - start
    same = bool((fast.ranks == slow.ranks).all() and (fast.requested == slow.requested).all())
    return {"fast_s": fast_s, "sessions_s": slow_s, "ratio": slow_s / fast_s, "identical": same}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    split = split_stream(dataset)
    generator, model = load_models(args, dataset, split)
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        valid, test = prepare(generator, model, split, dataset_label(dataset), cache, stages)
        start = time.perf_counter()
        rows = sweep(valid, test)
        stages["sweep (8 points)"] = time.perf_counter() - start
        sessions = None if args.skip_sessions else session_ratio(test)
    result = {
        "dataset": dataset.name,
        "users": test.num_users,
        "steps": test.num_users * test.window,
        "models": {"llm": args.llm or "untrained default", "srm": args.srm or "untrained default"},
        "stages_s": stages,
        "points": rows,
        "sessions": sessions,
        "budget": {"sweep_s": BUDGET_SWEEP_S, "ok": stages["sweep (8 points)"] <= BUDGET_SWEEP_S},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
            "machine": platform.machine(),
        },
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['dataset']}: {result['users']} users, {result['steps']} test steps")
    print(f"{'stage':<28}{'seconds':>10}")
    for name, seconds in result["stages_s"].items():
        print(f"{name:<28}{seconds:>10.2f}")
    print(f"\n{'point':<28}{'seconds':>10}{'rate':>8}{'NDCG@10':>10}")
    for row in result["points"]:
        print(
            f"{row['point']:<28}{row['seconds']:>10.2f}{row['rate']:>8.3f}{row['NDCG@10']:>10.4f}"
        )
    if result["sessions"]:
        s = result["sessions"]
        print(
            f"\nrandom(0.3): fast replay {s['fast_s']:.2f}s vs DeviceSession replay "
            f"{s['sessions_s']:.2f}s ({s['ratio']:.1f}x), identical records: {s['identical']}"
        )
    ok = "within" if result["budget"]["ok"] else "OVER"
    print(f"sweep of 8 points {ok} the {result['budget']['sweep_s']:.0f} s budget")


if __name__ == "__main__":
    main()
