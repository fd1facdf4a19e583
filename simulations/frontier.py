"""Device models at a per-click budget: full NDCG@10 against what one click costs a device.

Reads model-table outputs (`lsc4rec model-table`, one folder per history length and
protocol, e.g. `--max-len 10 --loss ce --protocol last`), groups their runs into points
(model, training window L, options, reading), and times one click of each point on one
thread. A point's reading is how a device runs the model, and its accuracy is measured the
same way:

- `window`: the model re-reads its last L clicks with torch at every click and scores the
  held list of `--candidates`, as `seqrec.runners.HistoryRunner` does (SASRec and DIN have no
  other way; TTT4Rec and GRU4Rec can run so too);
- `stepping`: a model that carries a state (TTT4Rec, GRU4Rec) folds each click into it with
  its ONNX step graph under onnxruntime, the held list scored in the same run, whatever the
  history's length (TTT4Rec's surprise columns off, as a bundle whose policy does not read
  them); its accuracy is the model-table's whole-history reading (the state built from every
  click before the target, not from the last L).

A point is on the frontier when no other point of the same protocol is both cheaper per click
and more accurate. Writes `frontier.json`, `frontier.md` and `frontier.png` into `--out`.

    lsc4rec frontier --tables runs/mt_last_10 runs/mt_last_50 runs/mt_part_10 … --out runs/frontier
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shared.timing import time_calls

BUDGET_MS = 0.1  # the device's per-click budget (docs/design.md §5)
METRIC = "NDCG@10"
WINDOW, STEPPING = "window", "stepping"
# where a run's accuracy under each reading is (`simulations.model_table`)
READING_KEYS = {WINDOW: "full", STEPPING: "full_whole_history"}


@dataclass
class Point:
    """One device model setting: its accuracy in one protocol and its per-click cost."""

    protocol: str
    model: str
    max_len: int  # the training window
    options: list[str]  # config fields of the model beside the defaults, "KEY=VALUE"
    hidden_size: int
    seeds: int
    ndcg10: float
    ndcg10_sd: float
    reading: str = WINDOW  # WINDOW or STEPPING
    p50_ms: float = float("nan")
    runtime: str = ""
    on_frontier: bool = False

    @property
    def label(self) -> str:
        extra = f" ({', '.join(self.options)})" if self.options else ""
        if self.reading == STEPPING:
            return f"{self.model} trained L={self.max_len}, stepping{extra}"
        return f"{self.model} L={self.max_len}{extra}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lsc4rec frontier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", required=True, metavar="DIR",
                        help="model-table output folders")  # fmt: skip
    parser.add_argument("--candidates", type=int, default=50, help="held list scored per click")
    parser.add_argument("--iters", type=int, default=1000, help="timed clicks per point")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", default="runs/frontier")
    return parser.parse_args(argv)


def load_points(folders: list[str]) -> list[Point]:
    """Points (mean ± sd of full NDCG@10 over seeds) from model-table outputs."""
    groups: dict[tuple, list[float]] = {}
    for folder in folders:
        path = Path(folder) / "model_table.json"
        if not path.is_file():
            raise ValueError(f"no model_table.json in {folder}")
        payload = json.loads(path.read_text())
        for run in payload.get("runs", []):
            settings = run.get("settings", {})
            setting = (
                settings.get("protocol", "training-part"),
                run["model"],
                int(settings.get("max_len", payload["args"].get("max_len", 50))),
                tuple(o.split(":", 1)[1] for o in settings.get("options", [])),
                int(settings.get("hidden_size", payload["args"].get("hidden_size", 64))),
            )
            for reading, field in READING_KEYS.items():
                by_seed = groups.setdefault((*setting, reading), {})
                if run["seed"] in by_seed:
                    raise ValueError(
                        f"{run['model']} L={setting[2]} seed {run['seed']} ({setting[0]}) "
                        f"appears twice; merge the folders with the runs to keep first "
                        "(lsc4rec model-table --merge … --models …)"
                    )
                by_seed[run["seed"]] = float(run[field][METRIC]) if field in run else None
    points = []
    for (protocol, model, max_len, options, width, reading), by_seed in sorted(groups.items()):
        values = list(by_seed.values())
        if None in values:  # a run from before the whole-history reading: no such point
            continue
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        mean = statistics.mean(values)
        points.append(
            Point(protocol, model, max_len, list(options), width, len(values), mean, sd, reading)
        )
    return points


def mark_frontier(points: list[Point]) -> None:
    """`on_frontier` = no point of the same protocol is both cheaper and more accurate."""
    for point in points:
        point.on_frontier = not any(
            other.protocol == point.protocol
            and other.p50_ms < point.p50_ms
            and other.ndcg10 > point.ndcg10
            for other in points
        )


def click_cost(point: Point, num_items: int, args: argparse.Namespace) -> tuple[float, str]:
    """p50 ms of one click of a freshly initialised model of the point's configuration (the
    cost does not depend on the weights), and the runtime that ran it."""
    import torch

    from seqrec.models import build_model
    from simulations.model_table import model_options

    torch.set_num_threads(1)
    options = model_options(point.model, [f"{point.model}:{o}" for o in point.options])
    model = build_model(
        point.model,
        num_items=num_items,
        max_len=point.max_len,
        hidden_size=point.hidden_size,
        **options,
    )
    model = model.eval()
    rng = np.random.default_rng(0)
    candidates = rng.integers(1, num_items + 1, size=(1, args.candidates))
    clicks = rng.integers(1, num_items + 1, size=args.iters + args.warmup)
    if point.reading == STEPPING:
        return _stateful_cost(model, candidates, clicks, args), "onnxruntime step graph"
    return _recompute_cost(model, candidates, clicks, point.max_len, args), "torch, re-reads L"


def _stateful_cost(model, candidates: np.ndarray, clicks: np.ndarray, args) -> float:
    from device.onnx_runtime import OnnxStepModel
    from seqrec.onnx_export import export_scorer, export_step

    with tempfile.TemporaryDirectory() as folder:
        step = export_step(model, Path(folder) / "step.onnx", catalogue=False)
        runner = OnnxStepModel(step, export_scorer(model, Path(folder) / "scorer.onnx"))
    holder = {"state": runner.init_state(1)}

    def click(i: int) -> object:
        holder["state"], _, _, scores = runner.click(holder["state"], clicks[i : i + 1], candidates)
        return scores

    return time_calls(click, args.iters, args.warmup)[0]


def _recompute_cost(model, candidates: np.ndarray, clicks: np.ndarray, length: int, args) -> float:
    import torch

    window = torch.as_tensor(clicks[:length])[None].clone()  # [1, L]
    cands = torch.as_tensor(candidates)

    def click(i: int) -> object:
        window[0, :-1] = window[0, 1:].clone()  # the new click enters the window
        window[0, -1] = int(clicks[i])
        with torch.inference_mode():
            return model.score(window, cands)

    return time_calls(click, args.iters, args.warmup)[0]


def markdown(points: list[Point]) -> str:
    lines = []
    for protocol in dict.fromkeys(p.protocol for p in points):
        lines += [
            f"**{protocol}**: full {METRIC} (mean ± sd over seeds) against p50 per click "
            f"(one thread; budget {BUDGET_MS} ms; **bold** = on the frontier)",
            "",
            f"| model | trained on L | reads | full {METRIC} | seeds | p50 ms / click | runtime "
            "| frontier |",
            "| --- | ---: | --- | ---: | ---: | ---: | --- | --- |",
        ]
        mine = sorted((p for p in points if p.protocol == protocol), key=lambda p: p.p50_ms)
        for p in mine:
            name = f"**{p.label}**" if p.on_frontier else p.label
            reads = "every click (state)" if p.reading == STEPPING else f"last {p.max_len}"
            lines.append(
                f"| {name} | {p.max_len} | {reads} | {p.ndcg10:.4f} ± {p.ndcg10_sd:.4f} | {p.seeds} | "
                f"{p.p50_ms:.3f} | {p.runtime} | {'yes' if p.on_frontier else 'no'} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(p.protocol for p in points))
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.5), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        mine = [p for p in points if p.protocol == protocol]
        for model, reading in dict.fromkeys((p.model, p.reading) for p in mine):
            group = [p for p in mine if (p.model, p.reading) == (model, reading)]
            group.sort(key=lambda p: p.p50_ms)
            ax.errorbar(
                [p.p50_ms for p in group],
                [p.ndcg10 for p in group],
                yerr=[p.ndcg10_sd for p in group],
                marker="o",
                capsize=3,
                label=f"{model}, stepping" if reading == STEPPING else model,
                linestyle="none" if reading == STEPPING else "-",
            )
            for p in group:
                ax.annotate(f"L={p.max_len}", (p.p50_ms, p.ndcg10), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))  # fmt: skip
        front = sorted((p for p in mine if p.on_frontier), key=lambda p: p.p50_ms)
        ax.step([p.p50_ms for p in front], [p.ndcg10 for p in front], where="post",
                color="grey", linestyle=":", label="frontier")  # fmt: skip
        ax.axvline(BUDGET_MS, color="red", linestyle="--", linewidth=1, label="0.1 ms budget")
        ax.set_xscale("log")
        ax.set_xlabel("p50 ms per click (one thread)")
        ax.set_ylabel(f"full {METRIC}")
        ax.set_title(protocol)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        points = load_points(args.tables)
    except ValueError as error:
        print(f"lsc4rec frontier: error: {error}", file=sys.stderr)
        return 2
    if not points:
        raise ValueError("the model tables hold no runs")
    num_items = _catalogue_size(args.tables)
    costs: dict[tuple, tuple[float, str]] = {}
    for point in points:  # the cost of a setting is the same in both protocols: time it once
        key = (point.model, point.max_len, tuple(point.options), point.hidden_size, point.reading)
        if key not in costs:
            costs[key] = click_cost(point, num_items, args)
        point.p50_ms, point.runtime = costs[key]
    mark_frontier(points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(points)
    (out / "frontier.md").write_text(text)
    payload = {"points": [asdict(p) for p in points], "budget_ms": BUDGET_MS, "args": vars(args)}
    (out / "frontier.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(points, out / "frontier.png")
    print(text)
    return 0


def _catalogue_size(folders: list[str]) -> int:
    """The catalogue size of the tables' data set (all must be one data set)."""
    from shared.datasets import load_dataset

    names = set()
    for folder in folders:
        payload = json.loads((Path(folder) / "model_table.json").read_text())
        names.add((payload["dataset"], payload["args"].get("synthetic_users", 500)))
    if len(names) != 1:
        raise ValueError(f"the tables come from different data sets: {sorted(names)}")
    name, users = names.pop()
    options = {"num_users": users} if name == "synthetic" else {}
    return load_dataset(name, **options).num_items


if __name__ == "__main__":
    raise SystemExit(main())
