"""Per-click device cost: TTT4Rec state step + rerank vs SASRec recomputing its history.

On one CPU thread, for each history length L, times one click as a device handles it:

- `ttt4rec-onnx`: onnxruntime step graph (state in, state out, and the click's surprise) +
  scorer on 50 candidates;
- `ttt4rec-onnx-no-surprise`: the same with a step graph that only updates the state (what
  the surprise costs; built here, the device always exports the graph with surprise);
- `ttt4rec-torch`: the same with the torch model (`step` + `score_features`);
- `ttt4rec-recompute`: TTT4Rec re-reading the whole history (`score`), for reference;
- `sasrec-recompute`: SASRec re-encoding the last L clicks and scoring 50 candidates.

The TTT rows first fold L clicks into the state, so any dependence on history length would
show. Prints a table (p50 / p95 ms, p50 ratio vs `ttt4rec-onnx` at the same L) and writes
JSON with the numbers and the budget checks of docs/design.md §5.

    python benchmarks/device_step.py --out runs/bench/device_step.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import onnxruntime as ort
import torch

from device.onnx_runtime import OnnxState, OnnxTTT4Rec, session_options
from seqrec.models.sasrec import SASRec, SASRecConfig
from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig, TTT4RecState
from seqrec.onnx_export import _export, export_scorer, export_step
from shared.device_format import STATE_NAMES, state_output_names

BUDGET_P50_MS = 0.1  # ONNX step + rerank of 50 candidates (docs/design.md §5)
BUDGET_SPEEDUP_AT_50 = 5.0  # vs SASRec recomputing a 50-click history
FLAT_TOLERANCE = 1.5  # p50 at the longest history within this factor of the shortest


@dataclass
class Row:
    method: str
    history: int
    p50_ms: float
    p95_ms: float
    ratio_vs_onnx: float = float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/device_step.json"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 50, 200])
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--num-items", type=int, default=1682, help="ml-100k catalogue size")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--iters", type=int, default=500, help="timed clicks per row")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def time_calls(fn: Callable[[int], object], iters: int, warmup: int) -> tuple[float, float]:
    """p50 and p95 wall time in ms of `fn(i)` over `iters` calls after `warmup` calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(iters):
        start = time.perf_counter_ns()
        fn(warmup + i)
        times.append((time.perf_counter_ns() - start) / 1e6)
    cuts = statistics.quantiles(times, n=100)
    return statistics.median(times), cuts[94]


def bench_ttt_torch(model, history, stream, candidates, args) -> tuple[float, float]:
    state, _ = model.encode_with_state(history)
    holder = {"state": state}

    def click(i: int) -> object:
        holder["state"], features = model.step(holder["state"], stream[i : i + 1])
        return model.score_features(features, candidates)

    return time_calls(click, args.iters, args.warmup)


def bench_ttt_onnx(runner, model, history, stream, candidates, args) -> tuple[float, float]:
    state, _ = model.encode_with_state(history)  # same state the device would hold
    holder = {"state": OnnxState.from_bytes(state.to_bytes())}
    items, cands = stream.numpy(), candidates.numpy()

    def click(i: int) -> object:
        holder["state"], features = runner.step(holder["state"], items[i : i + 1])
        return runner.score_features(features, cands)

    return time_calls(click, args.iters, args.warmup)


class _PlainStep(torch.nn.Module):
    """The step graph without the surprise outputs: state in, state out."""

    def __init__(self, model: TTT4Rec) -> None:
        super().__init__()
        self.model = model

    def forward(self, weight, bias, grad_weight, grad_bias, pos, feature, recent, items):
        state = TTT4RecState(weight, bias, grad_weight, grad_bias, pos, feature, recent)
        return self.model.step(state, items)[0].tensors()


def plain_step_session(model: TTT4Rec, path: Path) -> ort.InferenceSession:
    state = model.init_state(2)
    names = [*TTT4RecState.names(), "items"]
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        args = (*state.tensors(), torch.tensor([1, 0]))
        dynamic = {name: {0: batch} for name in names}
        _export(_PlainStep(model), args, path, names, list(state_output_names()), dynamic)
    return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])


def bench_onnx_no_surprise(session, runner, model, history, stream, candidates, args):
    """As `bench_ttt_onnx`, with the same numpy state round trip `OnnxTTT4Rec.step` does, so
    only the graph differs."""
    state, _ = model.encode_with_state(history)
    holder = {"state": OnnxState.from_bytes(state.to_bytes())}
    outputs = list(state_output_names())
    items, cands = stream.numpy(), candidates.numpy()

    def click(i: int) -> object:
        feeds = dict(zip(STATE_NAMES, holder["state"].arrays))
        feeds["items"] = items[i : i + 1]
        holder["state"] = OnnxState(tuple(session.run(outputs, feeds)))
        return runner.score_features(holder["state"].feature, cands)

    return time_calls(click, args.iters, args.warmup)


def bench_recompute(model, history, stream, candidates, args) -> tuple[float, float]:
    """A model that re-reads its last L clicks on every click, then scores the candidates."""
    window = history.clone()

    def click(i: int) -> object:
        window[0, :-1] = window[0, 1:].clone()  # slide the window: the new click enters
        window[0, -1] = stream[i]
        return model.score(window, candidates)

    return time_calls(click, args.iters, args.warmup)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    total = args.warmup + args.iters
    generator = torch.Generator().manual_seed(args.seed)
    # max_len covers the longest history, so the TTT state really holds all L clicks.
    ttt_config = TTT4RecConfig(
        num_items=args.num_items, hidden_size=args.hidden, max_len=max(args.lengths)
    )
    ttt = TTT4Rec(ttt_config).eval()
    with tempfile.TemporaryDirectory() as folder:
        paths = export_step(ttt, Path(folder) / "step.onnx")
        scorer = export_scorer(ttt, Path(folder) / "scorer.onnx")
        runner = OnnxTTT4Rec(paths, scorer, num_threads=1)
        plain = plain_step_session(ttt.float(), Path(folder) / "plain_step.onnx")
    candidates = torch.randint(1, args.num_items + 1, (1, args.candidates), generator=generator)
    stream = torch.randint(1, args.num_items + 1, (total,), generator=generator)
    rows: list[Row] = []
    with torch.inference_mode():
        for length in args.lengths:
            history = torch.randint(1, args.num_items + 1, (1, length), generator=generator)
            sasrec_config = SASRecConfig(
                num_items=args.num_items, hidden_size=args.hidden, max_len=length
            )
            sasrec = SASRec(sasrec_config).eval()
            timings = {
                "ttt4rec-onnx": bench_ttt_onnx(runner, ttt, history, stream, candidates, args),
                "ttt4rec-onnx-no-surprise": bench_onnx_no_surprise(
                    plain, runner, ttt, history, stream, candidates, args
                ),
                "ttt4rec-torch": bench_ttt_torch(ttt, history, stream, candidates, args),
                "ttt4rec-recompute": bench_recompute(ttt, history, stream, candidates, args),
                "sasrec-recompute": bench_recompute(sasrec, history, stream, candidates, args),
            }
            onnx_p50 = timings["ttt4rec-onnx"][0]
            for method, (p50, p95) in timings.items():
                rows.append(Row(method, length, p50, p95, p50 / onnx_p50))
    return {
        "rows": [asdict(row) for row in rows],
        "checks": budget_checks(rows, args.lengths),
        "settings": {key: str(value) for key, value in vars(args).items()},
        "environment": environment(),
        "ttt4rec_config": ttt.config.to_dict(),
    }


def budget_checks(rows: list[Row], lengths: list[int]) -> dict:
    """The docs/design.md §5 device targets, measured."""
    onnx = {row.history: row.p50_ms for row in rows if row.method == "ttt4rec-onnx"}
    sasrec = {row.history: row.p50_ms for row in rows if row.method == "sasrec-recompute"}
    checks = {
        "onnx_p50_max_ms": max(onnx.values()),
        "onnx_p50_within_budget": max(onnx.values()) <= BUDGET_P50_MS,
        "onnx_p50_longest_over_shortest": onnx[max(lengths)] / onnx[min(lengths)],
    }
    checks["flat_in_history"] = checks["onnx_p50_longest_over_shortest"] <= FLAT_TOLERANCE
    if 50 in onnx:
        checks["speedup_vs_sasrec_at_50"] = sasrec[50] / onnx[50]
        checks["speedup_within_budget"] = checks["speedup_vs_sasrec_at_50"] >= BUDGET_SPEEDUP_AT_50
    return checks


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": 1,
    }


def print_table(result: dict) -> None:
    header = f"{'method':<26}{'history':>8}{'p50 ms':>10}{'p95 ms':>10}{'x onnx':>9}"
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        print(
            f"{row['method']:<26}{row['history']:>8}{row['p50_ms']:>10.4f}"
            f"{row['p95_ms']:>10.4f}{row['ratio_vs_onnx']:>9.1f}"
        )
    print()
    for key, value in result["checks"].items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
