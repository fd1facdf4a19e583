"""`lsc4rec train-llm`: train the cloud candidate generator and save it as one folder.

From scratch (a small T5 by default), or on a local pretrained model with `--base-model`
(LoRA unless `--lora-rank 0`). Trains on the training part of the stream split, keeps the
epoch with the best validation Recall@N, and writes model, tokenizer, item index, titles and
`training_log.json` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cli.common import add_dataset_args, load_dataset_from_args
from cloud.config import BackboneConfig, GeneratorConfig, LoraOptions, TrainConfig

# Defaults come from the configs (light module, no torch), so the CLI and the library agree.
BACKBONE, GENERATOR, LORA, TRAIN = BackboneConfig(), GeneratorConfig(), LoraOptions(), TrainConfig()


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train-llm", help="train the cloud LLM candidate generator")
    add_dataset_args(parser)
    parser.add_argument("--out", required=True, help="model folder to write")
    _add_model_args(parser)
    _add_lora_args(parser)
    _add_train_args(parser)
    parser.set_defaults(func=run)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--backbone",
        default="t5",
        choices=("t5", "llama", "qwen2"),
        help="t5 = encoder-decoder (default); llama/qwen2 = decoder-only",
    )
    group.add_argument(
        "--indexing",
        default="atomic",
        choices=("atomic", "sequential"),
        help="item identifiers: one token per item, or P5-style digit tokens",
    )
    group.add_argument(
        "--d-model", type=int, default=BACKBONE.d_model, help="hidden width (from scratch)"
    )
    group.add_argument(
        "--layers", type=int, default=BACKBONE.num_layers, help="encoder (t5) or decoder layers"
    )
    group.add_argument(
        "--decoder-layers", type=int, default=BACKBONE.num_decoder_layers, help="t5 decoder layers"
    )
    group.add_argument("--heads", type=int, default=BACKBONE.num_heads, help="attention heads")
    group.add_argument("--d-ff", type=int, default=BACKBONE.d_ff, help="feed-forward width")
    group.add_argument("--dropout", type=float, default=BACKBONE.dropout, help="training dropout")
    group.add_argument(
        "--max-history",
        type=int,
        default=GENERATOR.max_history,
        help="items of the history in the prompt (the last L)",
    )
    group.add_argument(
        "--num-beams", type=int, default=GENERATOR.num_beams, help="beam width at generation"
    )


def _add_lora_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pretrained base model")
    group.add_argument(
        "--base-model",
        default=None,
        metavar="PATH",
        help="local transformers model folder (with tokenizer) to fine-tune",
    )
    group.add_argument(
        "--lora-rank", type=int, default=LORA.rank, help="LoRA rank; 0 = full fine-tuning"
    )
    group.add_argument("--lora-alpha", type=int, default=LORA.alpha, help="LoRA alpha")
    group.add_argument("--lora-dropout", type=float, default=LORA.dropout, help="LoRA dropout")
    group.add_argument(
        "--lora-targets",
        default="",
        metavar="A,B",
        help="modules to adapt (default: the attention projections)",
    )


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=TRAIN.epochs, help="training epochs")
    group.add_argument("--batch-size", type=int, default=TRAIN.batch_size)
    group.add_argument("--lr", type=float, default=TRAIN.lr, help="peak AdamW learning rate")
    group.add_argument(
        "--samples-per-epoch",
        type=int,
        default=TRAIN.samples_per_epoch,
        help="training examples drawn per epoch (0 = every prefix)",
    )
    group.add_argument(
        "--eval-n", type=int, default=TRAIN.eval_n, help="N of the validation Recall@N"
    )
    group.add_argument("--max-eval-users", type=int, default=0, help="0 = every stream user")
    group.add_argument("--test-window", type=int, default=10, help="online stream length T")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")


def build_configs(args: argparse.Namespace):
    """The generator and training configs the arguments describe (ValueError when invalid)."""
    backbone = BackboneConfig(
        kind=args.backbone,
        d_model=args.d_model,
        num_layers=args.layers,
        num_decoder_layers=args.decoder_layers,
        num_heads=args.heads,
        d_ff=args.d_ff,
        dropout=args.dropout,
    )
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    lora = LoraOptions(args.lora_rank, args.lora_alpha, args.lora_dropout, targets)
    generator = GeneratorConfig(
        backbone=backbone,
        indexing=args.indexing,
        max_history=args.max_history,
        num_beams=args.num_beams,
        lora=lora if args.base_model else None,
    )
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        samples_per_epoch=args.samples_per_epoch,
        eval_n=args.eval_n,
        max_eval_users=args.max_eval_users,
        seed=args.seed,
    )
    return generator, train


def run(args: argparse.Namespace) -> int:
    import torch

    from cloud.generator import CandidateGenerator
    from cloud.training import train_generator
    from shared.splits import split_stream

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.base_model and not Path(args.base_model).is_dir():
        raise FileNotFoundError(f"{args.base_model}: no such model folder")
    gen_config, train_config = build_configs(args)
    dataset = load_dataset_from_args(args)
    split = split_stream(dataset, test_window=args.test_window)
    generator = CandidateGenerator.create(
        gen_config,
        split.train,
        dataset.num_items,
        base_model_path=args.base_model,
        dataset_name=dataset.name,
        item_titles=dataset.item_titles,
        seed=args.seed,
    )
    trainable = sum(p.numel() for p in generator.model.parameters() if p.requires_grad)
    print(
        f"training {generator.model_version.split('-')[0]} ({gen_config.indexing} ids, "
        f"{trainable:,} trainable parameters) on {dataset.name}: "
        f"{sum(len(s) for s in split.train):,} training interactions"
    )
    started = time.perf_counter()
    report = train_generator(generator, split, train_config)
    seconds = time.perf_counter() - started
    generator.save_pretrained(args.out)
    _write_log(Path(args.out), dataset.name, report, train_config, seconds)
    print(
        f"best epoch {report.best_epoch + 1}: valid Recall@{train_config.eval_n} "
        f"{report.best_recall:.4f} ({seconds:.0f}s); model {generator.model_version} in {args.out}"
    )
    return 0


def _write_log(out: Path, dataset: str, report, config, seconds: float) -> None:
    import dataclasses

    log = {
        "dataset": dataset,
        "seconds": round(seconds, 1),
        "best_epoch": report.best_epoch + 1,
        f"best_recall@{config.eval_n}": report.best_recall,
        "losses": report.losses,
        f"valid_recall@{config.eval_n}": report.recalls,
        "valid_ndcg@10": report.ndcgs,
        "train_config": dataclasses.asdict(config),
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
