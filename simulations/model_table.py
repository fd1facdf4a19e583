"""The TTT4Rec abstract's model table on our data: every SRM trained with the same harness,
evaluated by leave-one-out, with 99 sampled negatives and with full ranking, mean ± std over
seeds.

Two leave-one-out protocols (`--protocol`):
- `training-part` (default): on the training part of the stream split, so the test target is
  the click just before the online stream and no stream click is ever trained on;
- `last`: on each user's whole sequence, the final click the test target and the one before
  it validation — the protocol of the papers and RecBole, to compare with published numbers.

    lsc4rec model-table --dataset ml-100k --seeds 0 1 2 --out runs/model_table
    lsc4rec model-table --dataset ml-100k --protocol last --out runs/model_table_last

Writes `model_table.json` and `model_table.md` into `--out` and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("NDCG@5", "NDCG@10", "HR@5", "HR@10")
MODELS = ("din", "gru4rec", "sasrec", "ttt4rec")
PROTOCOLS = {"sampled": "1:99 sampled negatives", "full": "full ranking (history masked)"}
# Models that carry a state are also scored as a device steps them: the state built from every
# click before the target, not from the last max_len (the key's runs exist for those only).
WHOLE_HISTORY = {
    "full_whole_history": "full ranking, the state stepped through the whole history",
}
SPLITS = {
    "training-part": "leave-one-out on the training part (target: the click before the stream)",
    "last": "leave-last-out (target: each user's last click, as in the papers)",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lsc4rec model-table", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument(
        "--protocol",
        default="training-part",
        choices=tuple(SPLITS),
        help="which clicks are held out: the training part's last two (default) or each "
        "user's last two (the papers')",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"models to train (default: {' '.join(MODELS)}); with --merge, the models whose "
        "runs are merged (default: all)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--epochs", type=int, default=200, help="most epochs (the paper's table: 10, --patience 0)"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many epochs without a better validation NDCG@10 (0 = never)",
    )
    parser.add_argument("--level", default="sequence", choices=("sequence", "prefix"))
    parser.add_argument(
        "--prefix-models",
        nargs="*",
        default=["din"],
        help="models trained one example per prefix whatever --level says (DIN: a window costs "
        "it as much as every prefix; see README)",
    )
    parser.add_argument("--loss", default="bce", choices=("bce", "sampled-softmax", "ce"))
    parser.add_argument("--negatives", type=int, default=4, help="per pair, for bce (1:4)")
    parser.add_argument("--stride", type=int, default=0, help="window stride (0 = max-len / 2)")
    parser.add_argument("--windows-per-batch", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument(
        "--prefixes-per-user",
        type=int,
        default=0,
        help="level prefix: training examples per user per epoch (0 = every prefix)",
    )
    parser.add_argument("--synthetic-users", type=int, default=500)
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MODEL:KEY=VALUE",
        help="a config field of one model, e.g. ttt4rec:num_layers=2 (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/model_table")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="only merge the runs of earlier outputs (e.g. parallel jobs) into --out",
    )
    return parser.parse_args(argv)


def run_one(name: str, seed: int, dataset, loo, negatives, args) -> dict:
    """Train one SRM with one seed; test metrics in both protocols."""
    import torch

    from seqrec.evaluation import evaluate_full, evaluate_sampled
    from seqrec.models import build_model
    from seqrec.training import TrainConfig, ValidationSet, train_srm
    from shared.batching import pad_histories

    torch.manual_seed(seed)
    model = build_model(
        name,
        num_items=dataset.num_items,
        hidden_size=args.hidden_size,
        max_len=args.max_len,
        **model_options(name, args.option),
    )
    valid = ValidationSet.build(
        loo.valid_history, loo.valid_target, dataset.num_items, max_len=args.max_len, seed=seed
    )
    config = TrainConfig(
        epochs=args.epochs,
        patience=args.patience,
        level=model_level(name, args),
        loss=args.loss,
        num_negatives=args.negatives,
        stride=args.stride,
        windows_per_batch=args.windows_per_batch,
        max_len=args.max_len,
        seed=seed,
        progress=True,
        prefixes_per_user=args.prefixes_per_user,
    )
    start = time.perf_counter()
    result = train_srm(model, loo.train, valid, config, on_epoch=_epoch_printer(name, seed))
    histories = pad_histories(loo.test_history, args.max_len)
    record = {
        "model": name,
        "seed": seed,
        "settings": run_settings(name, args),
        "best_epoch": result.best_epoch,
        "valid_NDCG@10": result.best_metric,
        "epochs_run": len(result.epochs),
        "train_seconds": time.perf_counter() - start,
        "sampled": evaluate_sampled(model, histories, loo.test_target, negatives[loo.users]),
        "full": evaluate_full(model, histories, loo.test_target, exclude=loo.test_history),
    }
    return record | whole_history_metrics(model, loo)


def whole_history_metrics(model, loo) -> dict:
    """`{"full_whole_history": metrics}` for a model that carries a state (what a device
    stepping every click gets), `{}` for one that re-reads a window."""
    from seqrec.evaluation import carries_state, evaluate_full, reading_whole_history
    from shared.batching import pad_histories

    if not carries_state(model):
        return {}
    longest = max(len(h) for h in loo.test_history)
    histories = pad_histories(loo.test_history, longest)
    with reading_whole_history(model, longest):
        full = evaluate_full(model, histories, loo.test_target, exclude=loo.test_history)
    return {"full_whole_history": full}


def _epoch_printer(name: str, seed: int):
    def show(epoch: int, record: dict) -> None:
        print(
            f"{name} seed {seed} epoch {epoch}: loss {record['loss']:.4f}, valid NDCG@10 "
            f"{record['NDCG@10']:.4f} ({record['seconds']:.1f}s)",
            flush=True,
        )

    return show


def model_level(name: str, args) -> str:
    return "prefix" if name in getattr(args, "prefix_models", []) else args.level


def run_settings(name: str, args) -> dict:
    """What a run's numbers depend on besides its seed; `--merge` refuses to mix them."""
    settings = {
        "dataset": args.dataset,
        "protocol": getattr(args, "protocol", "training-part"),
        "epochs": args.epochs,
        "patience": args.patience,
        "level": model_level(name, args),
        "loss": args.loss,
        "negatives": args.negatives,
        "stride": args.stride,
        "windows_per_batch": args.windows_per_batch,
        "hidden_size": args.hidden_size,
        "max_len": args.max_len,
        "prefixes_per_user": args.prefixes_per_user,
        "options": sorted(o for o in args.option if o.split(":", 1)[0] == name),
    }
    if args.dataset == "synthetic":
        settings["synthetic_users"] = args.synthetic_users
    return settings


def load_runs(directories: list[str]) -> tuple[str, list[dict]]:
    """The dataset and runs of earlier outputs, each run tagged with its settings.

    Raises:
        ValueError: a folder without `model_table.json`, runs trained differently (other
            than by seed), or the same model and seed twice.
    """
    runs = []
    for directory in directories:
        path = Path(directory) / "model_table.json"
        if not path.is_file():
            raise ValueError(f"no model_table.json in {directory}")
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or not {"args", "runs"} <= payload.keys():
            raise ValueError(f"{path} is not a model-table output (no 'args' and 'runs')")
        # Older outputs kept the settings only once per file, in its arguments (and were all
        # trained one example per prefix, 10 epochs, BCE 1:4).
        old = {"patience": 0, "level": "prefix", "loss": "bce", "negatives": 4, "stride": 0,
               "windows_per_batch": 32}  # fmt: skip
        file_args = argparse.Namespace(**{**old, **payload["args"]})
        for run in payload["runs"]:
            run.setdefault("settings", run_settings(run["model"], file_args))
            run["settings"].setdefault("protocol", "training-part")  # the only one before
            runs.append(run)
    check_mergeable(runs)
    return runs[0]["settings"]["dataset"], runs


PER_MODEL_SETTINGS = ("options", "level")  # may differ between models, never within one


def check_mergeable(runs: list[dict]) -> None:
    """Raise ValueError unless the runs differ only by per-model settings and seed, once each."""
    if not runs:
        raise ValueError("nothing to merge: the folders hold no runs")

    def common(settings: dict) -> dict:
        return {k: v for k, v in settings.items() if k not in PER_MODEL_SETTINGS}

    shared = common(runs[0]["settings"])
    per_model: dict[str, dict] = {}
    seen = set()
    for run in runs:
        settings = run["settings"]
        mine = common(settings)
        if mine != shared:
            diff = sorted(k for k in shared.keys() | mine.keys() if shared.get(k) != mine.get(k))
            raise ValueError(
                f"cannot merge {run['model']} seed {run['seed']}: trained with different "
                f"{', '.join(diff)} ({', '.join(f'{k}={mine.get(k)}' for k in diff)} vs "
                f"{', '.join(f'{k}={shared.get(k)}' for k in diff)})"
            )
        own = {k: settings.get(k) for k in PER_MODEL_SETTINGS}
        first = per_model.setdefault(run["model"], own)
        if own != first:
            raise ValueError(
                f"cannot merge {run['model']} seed {run['seed']}: {own} differ from {first}"
            )
        key = (run["model"], run["seed"])
        if key in seen:
            raise ValueError(f"{run['model']} seed {run['seed']} appears twice")
        seen.add(key)


def model_options(name: str, options: list[str]) -> dict:
    """Typed config fields for `name` from `MODEL:KEY=VALUE` options."""
    from seqrec.models import get_model_class
    from shared.options import parse_options

    mine = [o.split(":", 1)[1] for o in options if o.split(":", 1)[0] == name]
    return parse_options(get_model_class(name).config_class, mine)


def aggregate(runs: list[dict]) -> dict:
    """model -> protocol -> metric -> (mean, std) over seeds. A whole-history reading is
    summarised only for a model whose every run has it (older outputs lack it)."""
    table: dict = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        readings = [*PROTOCOLS, *(k for k in WHOLE_HISTORY if all(k in r for r in mine))]
        table[model] = {
            reading: {
                metric: (
                    float(np.mean([r[reading][metric] for r in mine])),
                    float(np.std([r[reading][metric] for r in mine])),
                )
                for metric in METRICS
            }
            for reading in readings
        }
    return table


def markdown(summary: dict, dataset: str, seeds: list[int], split: str = "training-part") -> str:
    lines = []
    for protocol, title in (PROTOCOLS | WHOLE_HISTORY).items():
        rows = {m: ps[protocol] for m, ps in summary.items() if protocol in ps}
        if not rows:
            continue
        lines += [
            f"**{dataset}, {SPLITS[split]}, {title}** (mean ± std over seeds "
            f"{', '.join(map(str, seeds))})",
            "",
            "| model | " + " | ".join(METRICS) + " |",
            "| --- |" + " --- |" * len(METRICS),
        ]
        for model, metrics in rows.items():
            cells = [f"{m:.4f} ± {s:.4f}" for m, s in (metrics[k] for k in METRICS)]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def training_markdown(runs: list[dict]) -> str:
    """Per model: best epoch and epochs run of each seed, and the training time."""
    lines = [
        "| model | best epoch (per seed) | epochs run | train minutes (mean) |",
        "| --- | --- | --- | --- |",
    ]
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = sorted((r for r in runs if r["model"] == model), key=lambda r: r["seed"])
        best = ", ".join(str(r["best_epoch"]) for r in mine)
        ran = ", ".join(str(r.get("epochs_run", "?")) for r in mine)
        minutes = np.mean([r["train_seconds"] for r in mine]) / 60
        lines.append(f"| {model} | {best} | {ran} | {minutes:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import torch

    from shared.batching import fixed_eval_negatives
    from shared.datasets import load_dataset
    from shared.splits import leave_one_out

    args = parse_args(argv)
    if args.merge:
        try:
            dataset_name, runs = load_runs(args.merge)
            if args.models:  # merge only these models' runs
                runs = [r for r in runs if r["model"] in args.models]
                if not runs:
                    raise ValueError(f"the folders hold no run of {', '.join(args.models)}")
        except ValueError as error:
            print(f"model_table: error: {error}", file=sys.stderr)
            return 2
        seeds = sorted({r["seed"] for r in runs})
        return write_outputs(runs, dataset_name, seeds, args)
    torch.set_num_threads(args.threads)
    options = {"num_users": args.synthetic_users} if args.dataset == "synthetic" else {}
    dataset = load_dataset(args.dataset, **options)
    loo = leave_one_out(held_out_sequences(dataset, args.protocol))
    # Negatives never come from anything the user ever clicked (stream included).
    negatives = fixed_eval_negatives(dataset.sequences, dataset.num_items, count=99, seed=1234)
    runs = []
    args.models = args.models or list(MODELS)
    for name in args.models:
        for seed in args.seeds:
            runs.append(run_one(name, seed, dataset, loo, negatives, args))
            save_partial(runs, args)  # a long table survives an interrupted run
            r = runs[-1]
            print(
                f"{name} seed {seed}: sampled NDCG@10 {r['sampled']['NDCG@10']:.4f}, "
                f"full NDCG@10 {r['full']['NDCG@10']:.4f} ({r['train_seconds']:.0f}s)"
            )
    return write_outputs(runs, args.dataset, args.seeds, args)


def held_out_sequences(dataset, protocol: str) -> list:
    """The sequences leave-one-out holds the last two clicks of, for `protocol`."""
    from shared.splits import split_stream

    if protocol == "last":
        return list(dataset.sequences)
    return split_stream(dataset).train


def save_partial(runs: list[dict], args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": args.dataset, "args": vars(args), "runs": runs, "partial": True}
    (out / "model_table.json").write_text(json.dumps(payload, indent=2))


def write_outputs(runs: list[dict], dataset: str, seeds: list[int], args) -> int:
    summary = aggregate(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = runs[0]["settings"].get("protocol", "training-part") if runs else "training-part"
    text = markdown(summary, dataset, seeds, split) + "\n" + training_markdown(runs)
    (out / "model_table.md").write_text(text)
    payload = {"dataset": dataset, "args": vars(args), "runs": runs, "summary": summary}
    (out / "model_table.json").write_text(json.dumps(payload, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
