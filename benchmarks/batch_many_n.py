"""A `GetCandidatesBatch` whose requests ask for many different n: one model call or one per n.

Serves a saved generator on loopback (one torch thread) and sends, `--repeats` times each:

- `one n`: 256 requests with n = 50;
- `many n, one call`: 256 requests with n = 1..256 answered from one call at the largest n
  (the item LM's top-n is a prefix of its top-256: `cloud.servicer.run_batch`);
- `many n, a call per n`: the same requests with the generator's `nested_top_n` turned off,
  as the server computed them before (one call per distinct n).

While each batch computes, a small request (n = 10) is sent 20 ms after it; its latency is
what a device waits behind the batch. Prints a table and writes JSON.

    python benchmarks/batch_many_n.py --model runs/llm --out runs/bench/batch_many_n.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from cloud.loading import load_generator
from cloud.server import ServerConfig, create_server
from protos.lsc4rec.v1 import candidates_pb2 as pb
from protos.lsc4rec.v1 import candidates_pb2_grpc as pb_grpc

BATCH = 256
HISTORY = 50
SMALL_DELAY_S = 0.02


class PerNGenerator:
    """The generator with `nested_top_n` off: the server makes one call per distinct n."""

    nested_top_n = False

    def __init__(self, inner) -> None:
        self.inner = inner
        self.num_items = inner.num_items
        self.model_version = inner.model_version

    def generate(self, histories, n=50, exclude=None):
        return self.inner.generate(histories, n=n, exclude=exclude)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/llm"), help="generator folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/batch_many_n.json"))
    return parser.parse_args(argv)


def time_batch(stub, batch, small) -> tuple[float, float]:
    """Seconds for the batch call, and for a small call sent `SMALL_DELAY_S` after it."""
    small_s: list[float] = []

    def send_small() -> None:
        time.sleep(SMALL_DELAY_S)
        start = time.perf_counter()
        stub.GetCandidates(small, timeout=60)
        small_s.append(time.perf_counter() - start)

    thread = threading.Thread(target=send_small)
    start = time.perf_counter()
    thread.start()
    stub.GetCandidatesBatch(batch, timeout=60)
    batch_s = time.perf_counter() - start
    thread.join()
    return batch_s, small_s[0]


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    generator = load_generator(args.model)
    rng = np.random.default_rng(args.seed)
    histories = [
        rng.choice(np.arange(1, generator.num_items + 1), HISTORY, replace=False).tolist()
        for _ in range(BATCH)
    ]
    small = pb.GetCandidatesRequest(history=histories[0], n=10)
    cases = {
        "one n": (generator, [50] * BATCH),
        "many n, one call": (generator, list(range(1, BATCH + 1))),
        "many n, a call per n": (PerNGenerator(generator), list(range(1, BATCH + 1))),
    }
    config = ServerConfig(max_batch_size=BATCH, max_n=BATCH, max_wait_ms=0.0)
    rows = []
    for name, (served, counts) in cases.items():
        server, port = create_server(served, "127.0.0.1:0", config)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.CandidateServiceStub(channel)
                batch = pb.GetCandidatesBatchRequest(
                    requests=[
                        pb.GetCandidatesRequest(history=h, n=n) for h, n in zip(histories, counts)
                    ]
                )
                time_batch(stub, batch, small)  # warm-up
                timings = [time_batch(stub, batch, small) for _ in range(args.repeats)]
        finally:
            server.shutdown(grace_s=0)
        rows.append(
            {
                "case": name,
                "batch_s": statistics.median(t[0] for t in timings),
                "small_request_ms": 1000 * statistics.median(t[1] for t in timings),
            }
        )
    base = rows[0]["batch_s"]
    for row in rows:
        row["batch_vs_one_n"] = row["batch_s"] / base
    return {"rows": rows, "settings": {k: str(v) for k, v in vars(args).items()}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(f"{'case':<24}{'batch s':>10}{'x one n':>9}{'small request ms':>18}")
    for row in result["rows"]:
        print(
            f"{row['case']:<24}{row['batch_s']:>10.3f}{row['batch_vs_one_n']:>9.2f}"
            f"{row['small_request_ms']:>18.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
