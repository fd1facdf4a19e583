"""`lsc4rec export-onnx`: write a trained stateful SRM's device graphs (TTT4Rec, GRU4Rec) for
onnxruntime.

Two loop-free graphs with a dynamic batch: `step.onnx` (state in, click in → state out,
`F_s` out) and `scorer.onnx` (`F_s`, candidate ids → scores). A parity check streams clicks
through both runtimes and reports the largest difference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from device.onnx_runtime import OnnxStepModel
from seqrec.checkpoint import load_srm
from seqrec.onnx_export import export_scorer, export_step


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-onnx", help="export a TTT4Rec's or GRU4Rec's step and scorer graphs"
    )
    parser.add_argument(
        "--model", required=True, help="a TTT4Rec or GRU4Rec checkpoint folder (train-srm)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: MODEL/onnx)")
    parser.add_argument(
        "--check-clicks",
        type=int,
        default=40,
        help="clicks streamed to compare onnxruntime with torch (0 = skip)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    model = load_srm(args.model)
    if not getattr(model, "stateful", False):
        raise ValueError(
            f"{args.model} holds a {model.name} model, which carries no state; "
            "ttt4rec and gru4rec export a step"
        )
    out = Path(args.out) if args.out else Path(args.model) / "onnx"
    step_path = export_step(model, out / "step.onnx")
    scorer_path = export_scorer(model, out / "scorer.onnx")
    print(f"wrote {step_path} and {scorer_path}")
    if args.check_clicks > 0:
        gap = parity_gap(model, step_path, scorer_path, args.check_clicks)
        print(f"onnxruntime vs torch over {args.check_clicks} clicks: max |Δscore| = {gap:.2e}")
    return 0


def parity_gap(model, step_path: Path, scorer_path: Path, clicks: int, users: int = 4) -> float:
    """Largest score difference between torch and onnxruntime over a random click stream."""
    import torch

    runner = OnnxStepModel(step_path, scorer_path)
    generator = torch.Generator().manual_seed(0)
    n = model.config.num_items
    torch_state, onnx_state = model.init_state(users), runner.init_state(users)
    candidates = torch.randint(1, n + 1, (users, 50), generator=generator)
    gap = 0.0
    with torch.no_grad():
        for _ in range(clicks):
            items = torch.randint(1, n + 1, (users,), generator=generator)
            torch_state, f_torch = model.step(torch_state, items)
            onnx_state, f_onnx = runner.step(onnx_state, items)
            s_torch = model.score_features(f_torch, candidates)
            s_onnx = torch.as_tensor(runner.score_features(f_onnx, candidates))
            gap = max(gap, float((s_torch - s_onnx).abs().max()))
    return gap
