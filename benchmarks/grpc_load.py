"""Closed-loop gRPC load on loopback: throughput and latency with micro-batching on and off.

For each mode (batched: `--max-batch-size`; unbatched: max batch size 1) the benchmark starts
`lsc4rec serve` in its own process (its own CPU and GIL), then for each client count runs
that many concurrent closed-loop callers (each sends its next request when the previous one
is answered) for `--duration` seconds, after a warm-up. Reports requests/s, p50/p95/p99
latency, errors by status and the mean server batch size, and the batched/unbatched
throughput ratio at every client count. Prints a markdown table and writes JSON.

Bounded: loopback only; each level stops after `--duration` seconds or `--max-requests`
requests, whichever comes first; every call has a deadline.

    python benchmarks/grpc_load.py --out runs/bench/grpc_load.json
    python benchmarks/grpc_load.py --model runs/llm --clients 1 8 32 64 --duration 5

The model: `--model DIR`, else the newest generator folder under `runs/`, else (with
`--train-synthetic`) a default-sized generator trained briefly on synthetic data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from protos.lsc4rec.v1 import candidates_pb2 as pb
from protos.lsc4rec.v1 import candidates_pb2_grpc as pb_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATOR_FILE = "generator.json"  # marks a generator folder (cloud.generator)
TARGET_SPEEDUP_AT_32 = 3.0  # batched / unbatched requests/s at 32 clients (the goal)


@dataclass
class Level:
    """One (mode, client count) measurement."""

    mode: str
    max_batch_size: int
    clients: int
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_batch: float = float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="generator folder")
    parser.add_argument(
        "--train-synthetic",
        action="store_true",
        help="no model given or found in runs/: train a default-sized one on synthetic data",
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each mode")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap per level")
    parser.add_argument("--n", type=int, default=50, help="candidates per request")
    parser.add_argument("--history-len", type=int, default=20, help="items per request")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the batched mode")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-queue-size", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call (s)")
    parser.add_argument("--torch-threads", type=int, default=1, help="server torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/grpc_load.json"))
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.max_requests < 1 or min(args.clients) < 1:
        parser.error("--duration, --max-requests and --clients must be positive")
    return args


# --------------------------------------------------------------------------- the model


def find_generator(runs: Path = REPO_ROOT / "runs") -> Path | None:
    """The most recently written generator folder under `runs/`, if any."""
    found = sorted(runs.glob(f"**/{GENERATOR_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def train_synthetic_generator(folder: Path, seed: int) -> Path:
    """A generator of the default kind and size (the item LM) trained briefly on synthetic data."""
    import torch

    from cloud.item_lm import ItemLMConfig, ItemSequenceGenerator
    from cloud.training import item_lm_train_config, train_item_lm
    from shared.datasets.synthetic import make_synthetic
    from shared.splits import split_stream

    torch.set_num_threads(1)
    dataset = make_synthetic(num_users=500, num_items=1000, seed=seed)
    split = split_stream(dataset)
    generator = ItemSequenceGenerator.create(
        ItemLMConfig(num_items=dataset.num_items), dataset_name=dataset.name, seed=seed
    )
    result = train_item_lm(generator, split, item_lm_train_config(epochs=2, progress=False))
    print(f"trained a synthetic generator: loss {result.epochs[-1]['loss']:.3f}", file=sys.stderr)
    generator.save_pretrained(folder)
    return folder


def resolve_model(args: argparse.Namespace, scratch: Path) -> Path:
    if args.model is not None:
        if not (args.model / GENERATOR_FILE).is_file():
            raise SystemExit(f"not a generator folder: {args.model}")
        return args.model
    found = find_generator()
    if found is not None:
        return found
    if not args.train_synthetic:
        raise SystemExit("no generator under runs/; pass --model DIR or --train-synthetic")
    return train_synthetic_generator(scratch / "llm", args.seed)


# --------------------------------------------------------------------------- the server


class ServerProcess:
    """`lsc4rec serve` in a child process, on a free loopback port."""

    def __init__(self, model: Path, args: argparse.Namespace, max_batch_size: int) -> None:
        command = [
            sys.executable, "-m", "cli.main", "serve", "--model", str(model),
            "--host", "127.0.0.1", "--port", "0",
            "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
            "--max-queue-size", str(args.max_queue_size), "--max-n", str(max(args.n, 500)),
            "--torch-threads", str(args.torch_threads), "--grace", "2",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        self.port = self._wait_until_serving()
        # Keep reading the log so a full pipe never blocks the server.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def _wait_until_serving(self) -> int:
        port = None
        for line in self.process.stderr:
            record = json.loads(line)
            if record["msg"] == "listening":
                port = record["port"]
            if record["msg"] == "serving":
                return port
        raise SystemExit(f"the server exited with status {self.process.wait()}")

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: the graceful path
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------- the load


def make_histories(num_items: int, count: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [(rng.choice(num_items, size=length, replace=False) + 1).tolist() for _ in range(count)]


async def run_level(port: int, level: Level, args, histories: list[list[int]]) -> Level:
    """`level.clients` closed-loop callers for `args.duration` s (or `args.max_requests`)."""
    latencies: list[float] = []
    batches: list[int] = []
    errors: Counter = Counter()
    issued = [0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CandidateServiceStub(channel)
        started = time.perf_counter()
        stop_at = started + args.duration

        async def caller(index: int) -> None:
            while time.perf_counter() < stop_at and issued[0] < args.max_requests:
                issued[0] += 1
                history = histories[(index * 7919 + issued[0]) % len(histories)]
                request = pb.GetCandidatesRequest(history=history, n=args.n)
                sent = time.perf_counter()
                try:
                    response = await stub.GetCandidates(request, timeout=args.timeout)
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                batches.append(response.timing.batch_size)

        await asyncio.gather(*(caller(i) for i in range(level.clients)))
        level.seconds = time.perf_counter() - started
    return summarise(level, latencies, batches, errors)


def summarise(level: Level, latencies: list[float], batches: list[int], errors) -> Level:
    level.requests = len(latencies)
    level.errors = dict(errors)
    level.rps = level.requests / level.seconds if level.seconds else 0.0
    if latencies:
        p50, p95, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
        level.p50_ms, level.p95_ms, level.p99_ms = float(p50), float(p95), float(p99)
        level.mean_batch = float(np.mean(batches))
    return level


def run_mode(model: Path, args, mode: str, max_batch_size: int, histories) -> list[Level]:
    server = ServerProcess(model, args, max_batch_size)
    try:
        warm = Level(mode, max_batch_size, clients=max(args.clients))
        warm_args = argparse.Namespace(**{**vars(args), "duration": args.warmup})
        asyncio.run(run_level(server.port, warm, warm_args, histories))  # shapes, caches
        levels = []
        for clients in args.clients:
            level = asyncio.run(
                run_level(server.port, Level(mode, max_batch_size, clients), args, histories)
            )
            print(f"  {mode:>9} {clients:>3} clients: {level.rps:8.1f} req/s", file=sys.stderr)
            levels.append(level)
        return levels
    finally:
        server.stop()


# --------------------------------------------------------------------------- report


def speedups(levels: list[Level]) -> dict[int, float]:
    rps = {(lv.mode, lv.clients): lv.rps for lv in levels}
    return {
        c: rps[("batched", c)] / rps[("unbatched", c)]
        for (mode, c) in rps
        if mode == "batched" and rps.get(("unbatched", c))
    }


def markdown_table(levels: list[Level], ratio: dict[int, float]) -> str:
    head = (
        "| clients | mode | max batch | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
        "| batched/unbatched |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for lv in sorted(levels, key=lambda lv: (lv.clients, lv.mode)):
        speed = f"{ratio[lv.clients]:.2f}x" if lv.mode == "batched" and lv.clients in ratio else ""
        rows.append(
            f"| {lv.clients} | {lv.mode} | {lv.max_batch_size} | {lv.rps:.1f} | {lv.p50_ms:.1f} "
            f"| {lv.p95_ms:.1f} | {lv.p99_ms:.1f} | {sum(lv.errors.values())} "
            f"| {lv.mean_batch:.1f} | {speed} |"
        )
    return "\n".join([head, *rows])


def display_path(model: Path, scratch: Path) -> str:
    """The model folder as written to the report: relative to the repository, never absolute."""
    if model.resolve().is_relative_to(Path(scratch).resolve()):
        return "(synthetic, trained for this run)"
    try:
        return str(model.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return model.name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model = resolve_model(args, Path(scratch))
        shown = display_path(model, Path(scratch))
        meta = json.loads((model / GENERATOR_FILE).read_text())
        histories = make_histories(meta["num_items"], 512, args.history_len, args.seed)
        print(
            f"model {shown} ({meta['model_version']}, {meta['num_items']} items)", file=sys.stderr
        )
        levels = run_mode(model, args, "batched", args.max_batch_size, histories)
        levels += run_mode(model, args, "unbatched", 1, histories)
    ratio = speedups(levels)
    print(markdown_table(levels, ratio))
    below_bound = [lv for lv in levels if lv.clients <= args.max_queue_size and lv.errors]
    result = {
        "model": {"path": shown, "model_version": meta["model_version"],
                  "num_items": meta["num_items"], "dataset": meta.get("dataset", "")},
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "out")},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "grpcio": grpc.__version__},
        "levels": [asdict(lv) for lv in levels],
        "batched_over_unbatched": ratio,
        "checks": {
            "zero_errors_below_queue_bound": not below_bound,
            f"speedup_at_32_ge_{TARGET_SPEEDUP_AT_32}": ratio.get(32, 0.0) >= TARGET_SPEEDUP_AT_32,
        },
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nchecks: {result['checks']}  (JSON in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
