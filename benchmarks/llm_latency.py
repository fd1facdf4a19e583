"""Cloud cost: latency of one request for N candidates, and throughput when requests batch.

On one CPU thread (by default), with real histories (training parts of the stream users):

- latency: p50 / p95 wall time of `generate([history], n)` over `--requests` calls;
- throughput: requests per second when the same requests go through `generate` in batches of
  1, 8 and 32, and the ratio to batch size 1 (what micro-batching 32 clients buys).

Several `--model` folders are timed side by side in one run: the item LM (exact top-N from one
forward pass) and the prompt generator (trie beam search; `--searches trie hf` adds
`model.generate` beam search with a trie logits processor). Prints a table and writes JSON
with the budget checks (README, performance budget) of the first model.

    python benchmarks/llm_latency.py --model runs/llm runs/llm_t5 --out runs/bench/llm_latency.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BUDGET_P50_MS = 10.0  # one request, 50 candidates, default model
BUDGET_BATCH_SPEEDUP = 5.0  # throughput at batch 32 vs unbatched


@dataclass
class Row:
    model: str  # model version of the generator
    search: str  # "exact" (item LM), "trie" or "hf" (prompt generator)
    batch: int
    p50_ms: float  # per generate call (one batch)
    p95_ms: float
    requests_per_s: float
    speedup_vs_batch1: float = float("nan")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        nargs="+",
        default=None,
        help="generator folder(s), timed side by side; default: the untrained default model",
    )
    parser.add_argument("--dataset", default="ml-100k", help="where the histories come from")
    parser.add_argument("--synthetic-users", type=int, default=500)
    parser.add_argument("-n", type=int, default=50, help="candidates per request")
    parser.add_argument("--requests", type=int, default=256, help="timed requests per row")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--searches", nargs="+", default=["trie"], choices=["trie", "hf"])
    parser.add_argument("--hf-requests", type=int, default=64, help="timed requests, hf rows")
    parser.add_argument("--warmup", type=int, default=8, help="untimed calls before each row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/llm_latency.json"))
    return parser.parse_args(argv)


def load_generators(args, dataset) -> list:
    """The given generator folders, or an untrained item LM of the default size."""
    from cloud.item_lm import ItemLMConfig, ItemSequenceGenerator
    from cloud.loading import load_generator

    if args.model:
        return [load_generator(folder) for folder in args.model]
    return [ItemSequenceGenerator.create(ItemLMConfig(num_items=dataset.num_items))]


def searches(generator, wanted: list[str]) -> list[str]:
    """How the generator decodes: the item LM has one exact way; the prompt one, the given."""
    return wanted if hasattr(generator.config, "search") else ["exact"]


def time_batches(generator, histories, batch: int, n: int, warmup: int) -> Row:
    """Run all `histories` through `generate` in chunks of `batch`; per-call times."""
    chunks = [histories[i : i + batch] for i in range(0, len(histories), batch)]
    for chunk in chunks[: max(1, warmup // batch)]:
        generator.generate(chunk, n=n, batch_size=batch)
    times = []
    for chunk in chunks:
        start = time.perf_counter_ns()
        generator.generate(chunk, n=n, batch_size=batch)
        times.append((time.perf_counter_ns() - start) / 1e6)
    p95 = statistics.quantiles(times, n=100)[94] if len(times) > 1 else times[0]
    return Row(
        model=generator.model_version,
        search=getattr(generator.config, "search", "exact"),
        batch=batch,
        p50_ms=statistics.median(times),
        p95_ms=p95,
        requests_per_s=1000.0 * len(histories) / sum(times),
    )


def markdown(rows: list[Row], n: int) -> str:
    lines = [
        "| model | search | batch | p50 ms / call | p95 ms / call | requests / s | × batch 1 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.search} | {r.batch} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | "
            f"{r.requests_per_s:.1f} | {r.speedup_vs_batch1:.2f} |"
        )
    return f"One request = {n} candidates.\n\n" + "\n".join(lines) + "\n"


def checks(rows: list[Row]) -> dict:
    """Budget checks of the first model's first search (the default generator)."""
    trie = {r.batch: r for r in rows if (r.model, r.search) == (rows[0].model, rows[0].search)}
    out = {}
    if 1 in trie:
        out["p50_ms_one_request"] = trie[1].p50_ms
        out["p50_within_budget"] = trie[1].p50_ms <= BUDGET_P50_MS
    if 1 in trie and 32 in trie:
        out["speedup_batch32"] = trie[32].speedup_vs_batch1
        out["speedup_within_budget"] = trie[32].speedup_vs_batch1 >= BUDGET_BATCH_SPEEDUP
    return out


def main(argv=None) -> int:
    import torch

    from shared.datasets import load_dataset
    from shared.splits import split_stream

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {"num_users": args.synthetic_users} if args.dataset == "synthetic" else {}
    dataset = load_dataset(args.dataset, **options)
    split = split_stream(dataset)
    pool = [split.train[u] for u in split.stream_users]
    generators = load_generators(args, dataset)
    rows: list[Row] = []
    for generator in generators:
        for search in searches(generator, args.searches):
            if search != "exact":
                generator.config.search = search
            count = args.hf_requests if search == "hf" else args.requests
            histories = [pool[i % len(pool)] for i in range(count)]
            for batch in args.batch_sizes:
                rows.append(time_batches(generator, histories, batch, args.n, args.warmup))
                base = next(
                    r
                    for r in rows
                    if (r.model, r.search, r.batch)
                    == (generator.model_version, search, args.batch_sizes[0])
                )
                rows[-1].speedup_vs_batch1 = rows[-1].requests_per_s / base.requests_per_s
                print(
                    f"{generator.model_version} {search} batch {batch}: "
                    f"{rows[-1].requests_per_s:.1f} requests/s",
                    flush=True,
                )
    text = markdown(rows, args.n)
    trained = bool(args.model)
    print(
        f"\n{'trained models' if trained else 'untrained default model'}, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}\n"
    )
    print(text)
    result = {
        "models": [g.model_version for g in generators],
        "trained": trained,
        "n": args.n,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "rows": [asdict(r) for r in rows],
        "budgets": {"p50_ms": BUDGET_P50_MS, "batch32_speedup": BUDGET_BATCH_SPEEDUP},
        "checks": checks(rows),
    }
    print(json.dumps(result["checks"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
