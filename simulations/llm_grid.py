"""Size the item-LM generator by validation: a grid of model settings, each trained the same
way (same split, same epochs and patience), ranked by validation Recall@50.

    lsc4rec llm-grid --dataset ml-100k --hidden 64 128 --dropout 0.2 0.5 \
        --attributes off on --out runs/llm_grid

Item knowledge: `--attributes off on` and `--text off on` (item text through the pretrained
sentence encoder, `cloud.item_text`). `--seeds 0 1 2` trains every setting once per seed and
adds a mean ± sd table. `--cold-items 0.1` trains on the cold-item split of the candidate
table and adds Recall@50 on cold targets.

Writes `llm_grid.json` and `llm_grid.md` into `--out` (one row per setting and seed:
Recall@50 and NDCG@10 of the best epoch, Recall@50 on rare targets (≤ 20 training clicks)
and on cold ones, best epoch, epochs run, training seconds, parameters) and prints the table.
Several `--out` folders of parallel jobs merge with `--merge`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

from shared.options import add_cold_item_args

GRID_FILE = "llm_grid.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lsc4rec llm-grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--synthetic-users", type=int, default=500)
    parser.add_argument("--test-window", type=int, default=10)
    parser.add_argument("--kind", nargs="+", default=["qwen2"], choices=("qwen2", "llama"))
    parser.add_argument("--hidden", nargs="+", type=int, default=[64])
    parser.add_argument("--layers", nargs="+", type=int, default=[2])
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dropout", nargs="+", type=float, default=[0.2])
    parser.add_argument("--weight-decay", nargs="+", type=float, default=[0.1])
    parser.add_argument("--lr", nargs="+", type=float, default=[1e-3])
    parser.add_argument("--stride", nargs="+", type=int, default=[0], help="0 = max_len / 2")
    parser.add_argument("--attributes", nargs="+", default=["off"], choices=("off", "on"))
    parser.add_argument("--text", nargs="+", default=["off"], choices=("off", "on"))
    parser.add_argument("--text-model", default=None, metavar="PATH", help="encoder folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: --seed")
    add_cold_item_args(parser)
    parser.add_argument("--rare-max", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/llm_grid")
    parser.add_argument("--merge", nargs="+", default=None, metavar="DIR")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> list[dict]:
    """Every combination of the grid's lists."""
    keys = ("kind", "hidden_size", "num_layers", "dropout", "weight_decay", "lr", "stride")
    keys += ("attributes", "text", "seed")
    lists = (args.kind, args.hidden, args.layers, args.dropout, args.weight_decay, args.lr)
    lists += (args.stride, args.attributes, args.text, args.seeds or [args.seed])
    return [dict(zip(keys, values)) for values in itertools.product(*lists)]


def train_one(setting: dict, dataset, split, args: argparse.Namespace, text=None) -> dict:
    """Train one setting to convergence; its row of the table (`text`: the item text
    vectors, used when the setting turns text on)."""
    from cloud.item_lm import ItemLMConfig, ItemSequenceGenerator
    from cloud.training import item_lm_train_config, train_item_lm

    hidden = setting["hidden_size"]
    config = ItemLMConfig(
        num_items=dataset.num_items,
        kind=setting["kind"],
        hidden_size=hidden,
        num_layers=setting["num_layers"],
        num_heads=args.heads,
        d_ff=4 * hidden,
        dropout=setting["dropout"],
        attention_dropout=setting["dropout"],
    )
    attributes = dataset.item_attributes if setting["attributes"] == "on" else None
    generator = ItemSequenceGenerator.create(
        config,
        item_attributes=attributes,
        seed=setting["seed"],
        item_text=text if setting["text"] == "on" else None,
        train_sequences=split.train,
    )
    train = item_lm_train_config(
        epochs=args.epochs,
        patience=args.patience,
        weight_decay=setting["weight_decay"],
        lr=setting["lr"],
        stride=setting["stride"],
        seed=setting["seed"],
        progress=False,
    )
    started = time.perf_counter()
    result = train_item_lm(generator, split, train)
    best = result.epochs[result.best_epoch - 1]
    seconds = time.perf_counter() - started
    return {
        **setting,
        "Recall@50": best["HR@50"],
        "NDCG@10": best["NDCG@10"],
        **target_groups(generator, split, args),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.epochs),
        "seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in generator.model.parameters()),
    }


def target_groups(generator, split, args: argparse.Namespace) -> dict[str, float]:
    """Recall@50 of the served lists on the rare validation targets and on the cold ones."""
    from simulations.candidate_table import generator_lists, list_metrics

    users = split.stream_users
    histories, targets = [split.train[u] for u in users], split.valid_target[users]
    clicks = np.bincount(np.concatenate(split.train), minlength=split.num_items + 1)
    rare = clicks[targets] <= args.rare_max
    cold = np.isin(targets, split.cold_items) if len(split.cold_items) else None
    lists = generator_lists(generator, histories, 50, batch_size=64)
    metrics = list_metrics(lists, targets, 50, rare, cold)
    return {key: metrics[key] for key in ("Recall@50 rare", "Recall@50 cold") if key in metrics}


SETTING_KEYS = ("kind", "hidden_size", "num_layers", "dropout", "weight_decay", "lr", "stride")
SETTING_KEYS += ("attributes", "text")


def _cold(row: dict) -> str:
    return f"{row['Recall@50 cold']:.4f}" if "Recall@50 cold" in row else "—"


def markdown(rows: list[dict], dataset: str) -> str:
    head = (
        f"Item-LM generator grid on {dataset} (validation targets, history = training part)\n\n"
        "| model | width | layers | dropout | weight decay | lr | stride | item attributes "
        "| item text | seed | Recall@50 | NDCG@10 | Recall@50 rare | Recall@50 cold "
        "| best epoch / run | seconds | parameters |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: |\n"
    )
    body = "".join(
        f"| {r['kind']} | {r['hidden_size']} | {r['num_layers']} | {r['dropout']} | "
        f"{r['weight_decay']} | {r.get('lr', 1e-3):g} | {r.get('stride', 0) or 'max_len/2'} | "
        f"{r['attributes']} | {r.get('text', 'off')} | {r.get('seed', 0)} | "
        f"{r['Recall@50']:.4f} | {r['NDCG@10']:.4f} | {r.get('Recall@50 rare', float('nan')):.4f} | "
        f"{_cold(r)} | {r['best_epoch']} / {r['epochs_run']} | {r['seconds']:.0f} | "
        f"{r['parameters']:,} |\n"
        for r in sorted(rows, key=lambda r: -r["Recall@50"])
    )
    return head + body + seed_summary(rows)


def seed_summary(rows: list[dict]) -> str:
    """Mean ± sd over seeds per setting, when some setting ran with more than one seed."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k, "off") for k in SETTING_KEYS), []).append(row)
    if all(len(group) < 2 for group in groups.values()):
        return ""

    def spread(group: list[dict], key: str) -> str:
        values = [r[key] for r in group if key in r]
        if not values:
            return "—"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    lines = [
        "",
        "Mean ± sd over seeds:",
        "",
        "| width | dropout | item attributes | item text | seeds | Recall@50 | NDCG@10 "
        "| Recall@50 rare | Recall@50 cold | seconds |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, group in sorted(groups.items(), key=lambda kv: -statistics.mean(
            r["Recall@50"] for r in kv[1])):  # fmt: skip
        setting = dict(zip(SETTING_KEYS, key))
        seconds = statistics.mean(r["seconds"] for r in group)
        lines.append(
            f"| {setting['hidden_size']} | {setting['dropout']} | {setting['attributes']} | "
            f"{setting['text']} | {len(group)} | {spread(group, 'Recall@50')} | "
            f"{spread(group, 'NDCG@10')} | {spread(group, 'Recall@50 rare')} | "
            f"{spread(group, 'Recall@50 cold')} | {seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict], dataset: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / GRID_FILE).write_text(json.dumps({"dataset": dataset, "rows": rows}, indent=2) + "\n")
    table = markdown(rows, dataset)
    (out / "llm_grid.md").write_text(table)
    print(table)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        parts = [json.loads((Path(d) / GRID_FILE).read_text()) for d in args.merge]
        write_outputs([r for p in parts for r in p["rows"]], parts[0]["dataset"], Path(args.out))
        return 0
    import torch

    from cloud.item_text import dataset_text_vectors
    from shared.datasets import load_dataset
    from shared.progress import progress_write
    from shared.splits import split_stream

    torch.set_num_threads(args.threads)
    options = {"num_users": args.synthetic_users} if args.dataset == "synthetic" else {}
    dataset = load_dataset(args.dataset, **options)
    split = split_stream(
        dataset, args.test_window, cold_share=args.cold_items, cold_seed=args.cold_seed
    )
    text = None
    if "on" in args.text:
        text = dataset_text_vectors(dataset, "on", args.text_model)
    rows = []
    for setting in settings(args):
        rows.append(train_one(setting, dataset, split, args, text))
        progress_write(json.dumps(rows[-1]), enabled=True)
        write_outputs(rows, dataset.name, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
