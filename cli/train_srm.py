"""`lsc4rec train-srm`: train a device model (ttt4rec, sasrec, gru4rec, din) on a data set.

Trains on the training part of the split (docs/design.md §3), selects the best epoch on the
validation targets, and writes a checkpoint folder (safetensors + config.json) plus
`training_log.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.common import add_dataset_args, load_dataset_from_args
from cloud.loading import load_generator
from seqrec import distributed
from seqrec.checkpoint import load_srm, save_srm
from seqrec.collaborative import (
    CollaborativeConfig,
    cached_candidate_examples,
    train_collaborative,
)
from seqrec.models import build_model, get_model_class
from seqrec.training import TrainConfig, ValidationSet, resolve_device, train_srm
from shared.options import parse_options
from shared.splits import split_stream

MODELS = ("ttt4rec", "sasrec", "gru4rec", "din")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train-srm", help="train a small recommendation model (SRM)")
    parser.add_argument("--model", required=True, choices=MODELS, help="which SRM")
    add_dataset_args(parser)
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--epochs", type=int, default=10, help="most training epochs (default 10, the papers')"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=0,
        help="stop after this many epochs without a better validation score (0 = never)",
    )
    parser.add_argument(
        "--level",
        default="sequence",
        choices=("sequence", "prefix"),
        help="sequence: every position of a window in one pass (default); prefix: one example each",
    )
    parser.add_argument(
        "--loss",
        default="bce",
        choices=("bce", "sampled-softmax", "ce"),
        help="bce with --negatives per pair (default), sampled-softmax, or ce (full softmax)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=0,
        help="clicks between window starts; every target keeps >= max-len - stride clicks of "
        "history (0 = max-len / 2)",
    )
    parser.add_argument("--windows-per-batch", type=int, default=32, help="level sequence")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="examples per step, level prefix"
    )
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
        help="level prefix: at most this many training examples per user per epoch (0 = all)",
    )
    parser.add_argument("--test-window", type=int, default=10, help="online stream length T")
    parser.add_argument(
        "--select",
        default="full",
        choices=("full", "sampled"),
        help="protocol of the validation metric that keeps the best epoch",
    )
    parser.add_argument(
        "--collaborative",
        action="store_true",
        help="then train with the LLM's candidate lists as hard negatives (LSC4Rec step 3)",
    )
    parser.add_argument("--llm", default=None, help="generator folder for --collaborative")
    parser.add_argument(
        "--init",
        default=None,
        help="start from this SRM checkpoint instead of training alone first",
    )
    parser.add_argument("--collab-epochs", type=int, default=5, help="cooperative epochs")
    parser.add_argument(
        "--collab-per-user",
        type=int,
        default=5,
        help="LLM lists per user (before each of the newest clicks)",
    )
    parser.add_argument(
        "--adaptive-epochs",
        type=int,
        default=1,
        help="adaptive re-training epochs on the newest clicks (0 = off)",
    )
    parser.add_argument("--cache-dir", default="runs/cache", help="where LLM lists are cached")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU when torch sees one), cpu, cuda or cuda:N; under torchrun each "
        "process takes the GPU of its LOCAL_RANK",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.collaborative and not args.llm:
        raise ValueError("--collaborative needs --llm DIR (a generator folder from train-llm)")
    if args.threads:
        torch.set_num_threads(args.threads)
    # under torchrun: every process trains on its share of each batch (`seqrec.distributed`)
    if distributed.init_from_env() and args.collaborative:
        raise ValueError("--collaborative trains in one process; run it without torchrun")
    try:
        return _train(args)
    finally:
        distributed.leave()


def _train(args: argparse.Namespace) -> int:
    import torch

    lead = distributed.rank() == 0  # the one process that prints and writes
    config = TrainConfig(
        progress=lead,
        device=resolve_device(args.device),
        epochs=args.epochs,
        patience=args.patience,
        level=args.level,
        loss=args.loss,
        stride=args.stride,
        windows_per_batch=args.windows_per_batch,
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
    if args.init:
        model = load_srm(args.init)
        print(f"starting from {args.init} ({model.name}); skipping training alone")
    else:
        model = build_model(
            args.model,
            num_items=dataset.num_items,
            hidden_size=args.hidden_size,
            max_len=args.max_len,
            **options,
        )
    if lead:
        print(
            f"training {model.name} on {dataset.name}: {sum(len(s) for s in split.train):,} "
            f"training interactions, {len(users)} validation users"
            + (f", {distributed.world_size()} processes" if distributed.is_distributed() else "")
        )
    log = {"dataset": dataset.name, "model": model.name, "stages": {}}
    if not args.init:
        on_epoch = _print_epoch if lead else None
        result = train_srm(model, split.train, valid, config, on_epoch=on_epoch)
        log["stages"]["alone"] = _stage_log(result, config.select_protocol)
        log["stages"]["alone"]["processes"] = distributed.world_size()
    if args.collaborative:
        log["stages"].update(_collaborative_stages(args, model, split, valid, config))
    if not lead:
        return 0
    out = save_srm(model, args.out)
    (Path(out) / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    for name, stage in log["stages"].items():
        print(
            f"{name}: best epoch {stage['best_epoch']}, {config.select_metric} = "
            f"{stage['best_metric']:.4f} ({stage['protocol']} ranking)"
        )
    print(f"checkpoint in {out}")
    return 0


def _stage_log(result, protocol: str) -> dict:
    return {
        "best_epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "protocol": protocol,
        "epochs": result.epochs,
        "train_config": result.config,
    }


def _collaborative_stages(args, model, split, valid, config) -> dict:
    """LSC4Rec steps 3 and 4 with the frozen generator in `args.llm`."""

    generator = load_generator(args.llm)
    n = min(50, generator.num_items - 1)

    def generate(histories):
        return generator.generate(histories, n=n)

    cache = Path(args.cache_dir)
    examples = cached_candidate_examples(
        generate, generator.model_version, split.train, cache, per_user=args.collab_per_user, n=n
    )
    users = split.stream_users
    valid_lists = cached_candidate_examples(
        generate,
        generator.model_version,
        [split.history_at_stream_start(u) for u in users],
        cache,
        per_user=1,
        n=n,
    )
    valid = valid.with_lists(valid_lists.candidates)
    collab = CollaborativeConfig(
        per_user=args.collab_per_user,
        epochs=args.collab_epochs,
        adaptive_epochs=args.adaptive_epochs,
    )
    print(f"cooperative training on {len(examples.users):,} LLM candidate lists")
    print(f"  before: inside the LLM lists, {valid.evaluate(model, 'list')}")
    results = train_collaborative(model, split.train, valid, examples, config, collab, _print_epoch)
    return {name: _stage_log(result, "list") for name, result in results.items()}


def _print_epoch(epoch: int, record: dict) -> None:
    print(
        f"epoch {epoch:>3}  loss {record['loss']:.4f}  HR@10 {record['HR@10']:.4f}  "
        f"NDCG@10 {record['NDCG@10']:.4f}  ({record['seconds']:.1f}s)"
    )
