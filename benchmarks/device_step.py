"""Per-click device cost: TTT4Rec state step + rerank vs SASRec recomputing its history.

On one CPU thread, for each history length L, times one click as a device handles it (the
click folded into the state with its surprise, the held list of 50 scored, fused with the
LLM's order and reranked with the history removed):

- `bundle-onnx`: what a device bundle runs (numpy + onnxruntime, no torch): one run of the
  fused step graph (state, surprise without the catalogue-wide columns, the list's scores),
  then the numpy fusion and rerank;
- `bundle-onnx-catalogue`: the same graph with the catalogue-wide surprise columns
  (surprisal, rank share), exported when the policy reads them;
- `onnx-two-runs`: the former path, a step run then a scorer run (full surprise);
- `ttt4rec-torch`: the same click with the torch model (`step_with_surprise` +
  `score_features`, full surprise) and the same rerank;
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
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from device.fusion import AgeAlphaFusion, LearnedFusion, RankSigmoidFusion, rerank_valid
from device.onnx_runtime import OnnxState, OnnxStepModel
from seqrec.models.sasrec import SASRec, SASRecConfig
from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig
from seqrec.onnx_export import export_scorer, export_step
from shared.candidates import CandidateList
from shared.timing import time_calls

BUDGET_P50_MS = 0.1  # ONNX step + rerank of 50 candidates (docs/design.md §5)
MOONSHOT_P50_MS = 0.05  # the design's aim
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


def _reranker(candidates: torch.Tensor, history: torch.Tensor, num_items: int) -> Callable:
    """The device's rerank of the held list as `DeviceSession.recommend` does it: the clicked
    items looked up in the session's table, LSC4Rec fusion (α = 0.5), top 10."""
    items = candidates[0].numpy()
    listed = CandidateList(items, -np.arange(len(items), dtype=np.float32), "bench")
    clicked = np.zeros(num_items + 1, dtype=bool)
    clicked[history[0].numpy()] = True
    fusion = RankSigmoidFusion()

    def show(logits: np.ndarray) -> np.ndarray:
        valid = (items != 0) & ~clicked[items]
        return rerank_valid(listed, logits, valid, fusion, k=10)

    return show


def bench_ttt_torch(model, history, stream, candidates, args) -> tuple[float, float]:
    state, _ = model.encode_with_state(history)
    holder = {"state": state}
    table = model.all_item_features()
    show = _reranker(candidates, history, args.num_items)

    def click(i: int) -> object:
        holder["state"], features, _ = model.step_with_surprise(
            holder["state"], stream[i : i + 1], table
        )
        return show(model.score_features(features, candidates)[0].numpy())

    return time_calls(click, args.iters, args.warmup)


def _onnx_setup(model, history, stream, candidates, args) -> tuple:
    """The state a device would hold after `history` (stored by torch, read as numpy), the
    clicks and candidates as numpy, and the rerank."""
    state, _ = model.encode_with_state(history)
    holder = {"state": OnnxState.from_bytes(state.to_bytes())}
    show = _reranker(candidates, history, args.num_items)
    return holder, stream.numpy(), candidates.numpy(), show


def bench_bundle(runner, model, history, stream, candidates, args) -> tuple[float, float]:
    """One fused graph run per click (step, surprise, the list's scores), then the rerank."""
    holder, items, cands, show = _onnx_setup(model, history, stream, candidates, args)

    def click(i: int) -> object:
        holder["state"], _, _, scores = runner.click(holder["state"], items[i : i + 1], cands)
        return show(scores[0])

    return time_calls(click, args.iters, args.warmup)


def bench_two_runs(runner, model, history, stream, candidates, args) -> tuple[float, float]:
    """A step run (with the surprise), then a scorer run, then the rerank."""
    holder, items, cands, show = _onnx_setup(model, history, stream, candidates, args)

    def click(i: int) -> object:
        holder["state"], features, _ = runner.step_with_surprise(holder["state"], items[i : i + 1])
        return show(runner.score_features(features, cands)[0])

    return time_calls(click, args.iters, args.warmup)


def bench_recompute(model, history, stream, candidates, args) -> tuple[float, float]:
    """A model that re-reads its last L clicks on every click, then scores the candidates."""
    window = history.clone()

    def click(i: int) -> object:
        window[0, :-1] = window[0, 1:].clone()  # slide the window: the new click enters
        window[0, -1] = stream[i]
        return model.score(window, candidates)

    return time_calls(click, args.iters, args.warmup)


# The fusions a bundle may carry, with weights of the size the experiment chooses.
FUSIONS_TIMED = (
    RankSigmoidFusion(alpha=0.5),
    AgeAlphaFusion(alphas=(0.8, 0.7, 0.6, 0.6, 0.3)),
    LearnedFusion(weights=(0.2, 1.5, 0.8, 0.1, -0.4, -0.2, 0.5, 0.35)),
)


def bench_fusions(args: argparse.Namespace) -> list[dict]:
    """p50 of the numpy part of a click alone, per fusion: fuse the held list of
    `--candidates` (one slot already clicked) and take the top 10, as `DeviceSession` does."""
    rng = np.random.default_rng(args.seed)
    items = np.arange(1, args.candidates + 1)
    listed = CandidateList(items, -np.sort(rng.random(args.candidates)).astype(np.float32))
    logits = rng.normal(size=args.candidates)
    valid = np.ones(args.candidates, dtype=bool)
    valid[3] = False
    rows = []
    for fusion in FUSIONS_TIMED:
        p50, p95 = time_calls(
            lambda i, f=fusion: rerank_valid(listed, logits, valid, f, 10, i % 10),
            args.iters,
            args.warmup,
        )
        rows.append({"fusion": fusion.name, "p50_ms": p50, "p95_ms": p95})
    return rows


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
        scorer = export_scorer(ttt, Path(folder) / "scorer.onnx")
        light = export_step(ttt, Path(folder) / "step_light.onnx", catalogue=False)
        full = export_step(ttt, Path(folder) / "step.onnx", catalogue=True)
        bundle = OnnxStepModel(light, scorer, num_threads=1)
        catalogue = OnnxStepModel(full, scorer, num_threads=1)
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
                "bundle-onnx": bench_bundle(bundle, ttt, history, stream, candidates, args),
                "bundle-onnx-catalogue": bench_bundle(
                    catalogue, ttt, history, stream, candidates, args
                ),
                "onnx-two-runs": bench_two_runs(catalogue, ttt, history, stream, candidates, args),
                "ttt4rec-torch": bench_ttt_torch(ttt, history, stream, candidates, args),
                "ttt4rec-recompute": bench_recompute(ttt, history, stream, candidates, args),
                "sasrec-recompute": bench_recompute(sasrec, history, stream, candidates, args),
            }
            onnx_p50 = timings["bundle-onnx"][0]
            for method, (p50, p95) in timings.items():
                rows.append(Row(method, length, p50, p95, p50 / onnx_p50))
    return {
        "rows": [asdict(row) for row in rows],
        "checks": budget_checks(rows, args.lengths),
        "fusion_rerank": bench_fusions(args),
        "settings": {key: str(value) for key, value in vars(args).items()},
        "environment": environment(),
        "ttt4rec_config": ttt.config.to_dict(),
    }


def budget_checks(rows: list[Row], lengths: list[int]) -> dict:
    """The docs/design.md §5 device targets, measured."""
    onnx = {row.history: row.p50_ms for row in rows if row.method == "bundle-onnx"}
    full = {row.history: row.p50_ms for row in rows if row.method == "bundle-onnx-catalogue"}
    sasrec = {row.history: row.p50_ms for row in rows if row.method == "sasrec-recompute"}
    checks = {
        "onnx_p50_max_ms": max(onnx.values()),
        "onnx_p50_within_budget": max(onnx.values()) <= BUDGET_P50_MS,
        "onnx_p50_within_moonshot": max(onnx.values()) <= MOONSHOT_P50_MS,
        "onnx_catalogue_p50_max_ms": max(full.values()),
        "onnx_catalogue_p50_within_budget": max(full.values()) <= BUDGET_P50_MS,
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
    header = f"{'method':<26}{'history':>8}{'p50 ms':>10}{'p95 ms':>10}{'x bundle':>9}"
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        print(
            f"{row['method']:<26}{row['history']:>8}{row['p50_ms']:>10.4f}"
            f"{row['p95_ms']:>10.4f}{row['ratio_vs_onnx']:>9.1f}"
        )
    print(f"\n{'fusion + rerank of the list (numpy)':<40}{'p50 ms':>10}{'p95 ms':>10}")
    for row in result["fusion_rerank"]:
        print(f"{row['fusion']:<40}{row['p50_ms']:>10.4f}{row['p95_ms']:>10.4f}")
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
