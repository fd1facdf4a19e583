"""Fine-tuning a local pretrained base model: LoRA touches only adapters and new token rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud import backbone as bb
from cloud.config import BackboneConfig, GeneratorConfig, LoraOptions
from cloud.generator import CandidateGenerator
from cloud.indexing import build_item_index
from cloud.tokenizer import build_tokenizer
from cloud.training import train_generator

TRAINABLE_MARKERS = ("lora_", "trainable_tokens_delta")


def _save_base(folder, kind: str, num_items: int) -> None:
    """A tiny "pretrained" model whose tokenizer has digits but no item tokens."""
    torch.manual_seed(0)
    config = GeneratorConfig()
    index = build_item_index("sequential", [], num_items)
    tokenizer = build_tokenizer(index, config.templates)
    backbone = BackboneConfig(kind=kind, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    model = bb.build_model(backbone, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_lora_changes_only_adapters_and_new_tokens(kind, tiny_data, tiny_train_config, tmp_path):
    dataset, split = tiny_data
    _save_base(tmp_path / "base", kind, dataset.num_items)
    config = GeneratorConfig(indexing="atomic", max_history=8, lora=LoraOptions(rank=4, alpha=8))
    gen = CandidateGenerator.create(
        config, split.train, dataset.num_items, base_model_path=tmp_path / "base"
    )
    assert gen.config.base_model == "base" and gen.config.backbone.kind == kind
    embed = gen.model.get_input_embeddings()
    vocab = len(gen.tokenizer)
    new_ids = torch.tensor([ids[0] for ids in gen.item_tokens])  # atomic: one token per item
    assert new_ids.min() >= vocab - dataset.num_items, "item tokens must be new tokens"
    old_ids = torch.arange(int(new_ids.min()))
    before = _snapshot(gen.model)
    old_rows, new_rows = embed(old_ids).detach().clone(), embed(new_ids).detach().clone()

    train_generator(gen, split, tiny_train_config(epochs=2, samples_per_epoch=64, lr=1e-2))

    trainable = {k for k, p in gen.model.named_parameters() if p.requires_grad}
    assert trainable and all(any(m in k for m in TRAINABLE_MARKERS) for k in trainable)
    for name, param in gen.model.named_parameters():
        if name in trainable:
            continue
        torch.testing.assert_close(param, before[name], rtol=0, atol=0, msg=f"{name} changed")
    changed = [
        k for k in trainable if not torch.equal(before[k], dict(gen.model.named_parameters())[k])
    ]
    assert any("lora_B" in k for k in changed) and any("trainable_tokens" in k for k in changed)
    torch.testing.assert_close(embed(old_ids), old_rows, rtol=0, atol=0)
    assert not torch.allclose(embed(new_ids), new_rows), "new item tokens must be trained"

    histories = [split.train[u] for u in range(5)]
    lists = gen.generate(histories, n=20)
    gen.save_pretrained(tmp_path / "tuned")
    assert (tmp_path / "tuned" / "adapter" / "adapter_model.safetensors").is_file()
    loaded = CandidateGenerator.from_pretrained(tmp_path / "tuned")
    assert loaded.model_version == gen.model_version
    for a, b in zip(lists, loaded.generate(histories, n=20)):
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_full_fine_tuning_of_a_base_model(tiny_data, tiny_train_config, tmp_path):
    dataset, split = tiny_data
    _save_base(tmp_path / "base", "t5", dataset.num_items)
    config = GeneratorConfig(indexing="sequential", max_history=8, lora=LoraOptions(rank=0))
    gen = CandidateGenerator.create(config, split.train, dataset.num_items, tmp_path / "base")
    assert not bb.is_peft_model(gen.model)
    train_generator(gen, split, tiny_train_config())
    gen.save_pretrained(tmp_path / "tuned")
    assert not (tmp_path / "tuned" / "adapter").exists()
    loaded = CandidateGenerator.from_pretrained(tmp_path / "tuned")
    history = split.train[0]
    (a,), (b,) = gen.generate([history], n=10), loaded.generate([history], n=10)
    np.testing.assert_array_equal(a.items, b.items)


def test_base_model_folder_errors(tmp_path):
    config = GeneratorConfig(lora=LoraOptions(rank=2))
    with pytest.raises(FileNotFoundError, match="config.json"):
        CandidateGenerator.create(config, [], 10, base_model_path=tmp_path)
