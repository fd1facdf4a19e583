"""`lsc4rec train-srm`: train a device model (ttt4rec, sasrec, gru4rec, din) on a data set.

Trains on the training part of the split (DESIGN.md section 3), selects the best epoch on the
validation targets, and writes a checkpoint folder (safetensors + config.json) plus
`training_log.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from cli.common import add_dataset_args, load_dataset_from_args

MODELS = ("ttt4rec", "sasrec", "gru4rec", "din")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train-srm", help="train a small recommendation model (SRM)")
    parser.add_argument("--model", required=True, choices=MODELS, help="which SRM")
    add_dataset_args(parser)
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--negatives", type=int, default=4, help="sampled negatives per positive")
    parser.add_argument("--hidden-size", type=int, default=64, help="embedding width")
    parser.add_argument("--max-len", type=int, default=50, help="history length the model reads")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field of the model's config, e.g. mini_batch_size=16 (repeatable)",
    )
    parser.add_argument(
        "--prefixes-per-user",
        type=int,
        default=0,
        help="at most this many training examples per user per epoch (0 = all)",
    )
    parser.add_argument("--test-window", type=int, default=10, help="online stream length T")
    parser.add_argument(
        "--select",
        default="full",
        choices=("full", "sampled"),
        help="protocol of the validation metric that keeps the best epoch",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.set_defaults(func=run)


def parse_options(config_class, options: list[str]) -> dict:
    """`["mini_batch_size=16", "use_gate=false"]` → typed kwargs of `config_class`."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    out = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            valid = ", ".join(sorted(fields))
            raise ValueError(
                f"bad --option {option!r}; expected KEY=VALUE with KEY one of: {valid}"
            )
        default = fields[key].default
        if isinstance(default, bool):
            out[key] = value.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(default, (int, float)):
            try:
                out[key] = type(default)(value)
            except ValueError:
                raise ValueError(
                    f"--option {key} needs a {type(default).__name__}, got {value!r}"
                ) from None
        else:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from device.checkpoint import save_srm
    from device.models import build_model, get_model_class
    from device.training import TrainConfig, ValidationSet, train_srm
    from shared.splits import split_stream

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        num_negatives=args.negatives,
        max_len=args.max_len,
        seed=args.seed,
        select_protocol=args.select,
        prefixes_per_user=args.prefixes_per_user,
    )
    options = parse_options(get_model_class(args.model).config_class, args.option)
    dataset = load_dataset_from_args(args)
    split = split_stream(dataset, test_window=args.test_window)
    users = split.stream_users
    valid = ValidationSet.build(
        [split.train[u] for u in users],
        split.valid_target[users],
        dataset.num_items,
        max_len=args.max_len,
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    model = build_model(
        args.model,
        num_items=dataset.num_items,
        hidden_size=args.hidden_size,
        max_len=args.max_len,
        **options,
    )
    print(
        f"training {args.model} on {dataset.name}: {sum(len(s) for s in split.train):,} "
        f"training interactions, {len(users)} validation users"
    )
    result = train_srm(model, split.train, valid, config, on_epoch=_print_epoch)
    out = save_srm(model, args.out)
    log = {
        "dataset": dataset.name,
        "model": args.model,
        "best_epoch": result.best_epoch,
        f"best_{config.select_metric}": result.best_metric,
        "epochs": result.epochs,
        "train_config": result.config,
    }
    (Path(out) / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(
        f"best epoch {result.best_epoch}: {config.select_metric} = {result.best_metric:.4f} "
        f"({config.select_protocol} ranking); checkpoint in {out}"
    )
    return 0


def _print_epoch(epoch: int, record: dict) -> None:
    print(
        f"epoch {epoch:>3}  loss {record['loss']:.4f}  HR@10 {record['HR@10']:.4f}  "
        f"NDCG@10 {record['NDCG@10']:.4f}  ({record['seconds']:.1f}s)"
    )
