"""The transformers model under the generator: built from a config, or a local pretrained one.

From scratch: a T5 (encoder–decoder) or Llama/Qwen2 (decoder-only) configuration sized by
`BackboneConfig`. From a base model: `from_pretrained` on a local folder (never the network),
new item tokens added and the embeddings resized, then LoRA adapters via peft (base weights
frozen; the new token rows trainable through `trainable_token_indices`) or full fine-tuning.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloud.config import BackboneConfig, LoraOptions

# Attention projections adapted by LoRA when no target modules are given, by naming family.
DEFAULT_LORA_TARGETS = (("q", "k", "v", "o"), ("q_proj", "k_proj", "v_proj", "o_proj"))


@contextmanager
def _peft_wrapping() -> Iterator[None]:
    """Silence one known FutureWarning that peft itself triggers while wrapping a model.

    peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecated; the call is
    inside peft, not ours, so only that message is ignored and every other warning still fails.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning
        )
        yield


@contextmanager
def _no_hf_bars() -> Iterator[None]:
    """Hide transformers' "Loading weights" / "Writing model shards" bars: a local folder
    loads or saves in milliseconds, and the bars' carriage returns end up in logs and in the
    server's JSON-lines stderr."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' multi-line load report off stderr (the server's stderr is JSON
    lines): `_require_every_weight` turns what it reports into one error."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _require_every_weight(model_dir: Path, info: dict) -> None:
    """Raise ValueError when `from_pretrained`'s loading info names a tensor it did not load
    from the folder (it initialised it at random) or one it could not use."""
    problems = {
        "missing": info.get("missing_keys"),
        "unexpected": info.get("unexpected_keys"),
        "mis-shaped": info.get("mismatched_keys"),
    }
    for what, keys in problems.items():
        if keys:
            names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            raise ValueError(f"{model_dir}: {what} weight {names[0]}{more}; refusing to load")
    if info.get("error_msgs"):
        raise ValueError(f"{model_dir}: {info['error_msgs'][0]}")


def build_model(backbone: BackboneConfig, vocab_size: int, pad_id: int, eos_id: int):
    """A randomly initialised model of the configured family.

    Args:
        backbone: architecture.
        vocab_size: tokenizer size (rows of the embedding).
        pad_id, eos_id: special token ids; T5 starts decoding from the pad token.
    """
    if backbone.kind == "t5":
        from transformers import T5Config, T5ForConditionalGeneration

        config = T5Config(
            vocab_size=vocab_size,
            d_model=backbone.d_model,
            d_kv=backbone.d_model // backbone.num_heads,
            d_ff=backbone.d_ff,
            num_layers=backbone.num_layers,
            num_decoder_layers=backbone.num_decoder_layers,
            num_heads=backbone.num_heads,
            dropout_rate=backbone.dropout,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            decoder_start_token_id=pad_id,
        )
        return T5ForConditionalGeneration(config)
    return build_decoder_only(backbone, vocab_size, pad_id, eos_id)


def build_decoder_only(backbone: BackboneConfig, vocab_size: int, pad_id: int, eos_id: int | None):
    """A randomly initialised Llama/Qwen2 causal LM (embeddings tied to the output head)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[backbone.kind]
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=backbone.d_model,
        intermediate_size=backbone.d_ff,
        num_hidden_layers=backbone.num_layers,
        num_attention_heads=backbone.num_heads,
        num_key_value_heads=backbone.num_heads,
        max_position_embeddings=backbone.max_positions,
        attention_dropout=backbone.dropout,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return model_class(config)


def load_pretrained(path: str | Path):
    """Load a local model folder (config + weights) and its tokenizer, offline.

    Raises:
        FileNotFoundError: the folder, its config.json or its tokenizer is missing.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a transformers model folder)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{folder}: no tokenizer files (tokenizer.json) beside the model")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with _no_hf_bars():
        model = model_class.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def default_lora_targets(model) -> list[str]:
    """The attention projections the model actually has (T5 names or Llama/Qwen names)."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for family in DEFAULT_LORA_TARGETS:
        if set(family) <= leaf_names:
            return list(family)
    raise ValueError("cannot guess LoRA target modules for this model; pass them explicitly")


def apply_lora(model, options: LoraOptions, new_token_ids: list[int]):
    """Wrap `model` with LoRA adapters; base weights frozen, new token rows trainable.

    Args:
        model: a transformers model (embeddings already resized for the new tokens).
        options: rank, alpha, dropout, target modules (rank must be >= 1).
        new_token_ids: token ids added for this task, trained through `trainable_token_indices`.
    Returns:
        the peft model.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if options.rank < 1:
        raise ValueError("apply_lora needs rank >= 1 (rank 0 means full fine-tuning)")
    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules) or default_lora_targets(model),
        task_type=task,
        trainable_token_indices=list(new_token_ids) or None,
    )
    with _peft_wrapping():
        return get_peft_model(model, config)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config")


def inference_model(model):
    """The transformers model to call for decoding (peft injects its layers in place)."""
    return model.get_base_model() if is_peft_model(model) else model


def save_model(model, folder: Path) -> None:
    """Save to `folder/model` (full weights, or the frozen base) and `folder/adapter` (LoRA)."""
    with _no_hf_bars():
        _save_model(model, folder)


def _save_model(model, folder: Path) -> None:
    if not is_peft_model(model):
        model.save_pretrained(folder / "model")
        return
    # The resized embedding is saved with the base below; the adapter keeps only the deltas.
    model.save_pretrained(folder / "adapter", save_embedding_layers=False)
    # The base weights never change under LoRA; save them without the adapter layers.
    base = copy.deepcopy(model).unload()
    base.save_pretrained(folder / "model")


def load_model(folder: Path):
    """Inverse of `save_model`, strict: the model comes back in eval mode with every weight
    read from the folder, or not at all.

    transformers fills a missing tensor with fresh random values and only logs a report;
    served, such a model answers with a random layer under the same version. Here a missing,
    unexpected or mis-shaped tensor refuses the folder instead.

    Raises:
        FileNotFoundError: `folder/model` is missing.
        ValueError: the config or the weights cannot be read, or do not fit each other
            (one line naming the file).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model_dir = folder / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no saved model (config.json missing)")
    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{model_dir / 'config.json'}: unreadable model config ({err})") from None
    model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = load_checked(model_class, model_dir)
    if (folder / "adapter" / "adapter_config.json").is_file():
        from peft import PeftModel

        with _peft_wrapping(), _no_hf_bars():
            model = PeftModel.from_pretrained(model, folder / "adapter", is_trainable=False)
    return model.eval()


def load_checked(model_class, model_dir: Path):
    """`model_class.from_pretrained(model_dir)` from local files, with every weight read from
    the folder (`_require_every_weight`) and no bars or load report on stderr.

    Raises:
        ValueError: the weights cannot be read or do not fit the config (one line).
    """
    from safetensors import SafetensorError

    try:
        with _no_hf_bars(), _quiet_transformers():
            model, info = model_class.from_pretrained(
                model_dir, local_files_only=True, output_loading_info=True
            )
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{model_dir}: unreadable weights (truncated?): {err}") from None
    _require_every_weight(model_dir, info)
    return model
