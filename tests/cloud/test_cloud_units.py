"""Item indexing, the item trie, the tokenizer and config validation."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.config import BackboneConfig, GeneratorConfig, LoraOptions, TrainConfig
from cloud.indexing import ItemIndex, build_item_index
from cloud.tokenizer import build_tokenizer
from cloud.trie import build_trie, needs_end_token


def test_sequential_ids_follow_first_appearance_in_training():
    train = [np.array([5, 3, 5]), np.array([2, 3, 7])]
    index = build_item_index("sequential", train, num_items=8)
    # first appearance: 5, 3, 2, 7; never seen: 1, 4, 6, 8 in id order
    assert index.identifiers[5] == "1" and index.identifiers[3] == "2"
    assert index.identifiers[2] == "3" and index.identifiers[7] == "4"
    assert [index.identifiers[i] for i in (1, 4, 6, 8)] == ["5", "6", "7", "8"]
    assert index.render([5, 3]) == "1 , 2"


def test_atomic_ids_and_round_trip(tmp_path):
    index = build_item_index("atomic", [], num_items=3)
    assert index.identifiers == ("", "<item_1>", "<item_2>", "<item_3>")
    index.save(tmp_path)
    assert ItemIndex.load(tmp_path) == index


def test_indexing_errors():
    with pytest.raises(ValueError, match="unknown indexing scheme"):
        build_item_index("semantic", [], 3)
    with pytest.raises(ValueError, match="must lie in 1..3"):
        build_item_index("sequential", [np.array([1, 4])], 3)
    with pytest.raises(ValueError, match="distinct"):
        ItemIndex("atomic", ("", "a", "a"))


def test_tokenizer_splits_digits_and_keeps_item_tokens():
    seq = build_item_index("sequential", [np.arange(1, 13)], 12)
    tok = build_tokenizer(seq, GeneratorConfig().templates)
    ids = tok("12 , 3", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["1", "2", ",", "3"]
    atomic = build_item_index("atomic", [], 12)
    tok = build_tokenizer(atomic, GeneratorConfig().templates)
    assert tok.convert_ids_to_tokens(tok("<item_12> next")["input_ids"]) == ["<item_12>", "next"]
    for template in GeneratorConfig().templates:  # every template word is in the vocabulary
        prompt = template.format(history="<item_3> <item_4>")
        assert tok.unk_token_id not in tok(prompt)["input_ids"]


def test_trie_paths_counts_and_masking():
    seqs = [[1, 2, 0], [1, 3, 0], [4, 0]]  # items 1..3, 0 = end token
    trie = build_trie(seqs)
    assert trie.max_depth == 3
    row, token, child = trie.children(np.array([0]))
    assert token.tolist() == [1, 4]
    counts = trie.allowed_counts([np.array([1]), np.array([1, 2, 2])])
    first_child = {t: c for t, c in zip(token.tolist(), child.tolist())}
    assert counts[0, first_child[1]] == 1  # item 2 still below prefix [1]
    assert counts[1, first_child[1]] == 0  # items 1 and 2 both excluded
    assert counts[1, first_child[4]] == 1


def test_trie_rejects_prefixes_and_duplicates():
    with pytest.raises(ValueError, match="prefix"):
        build_trie([[1], [1, 2]])
    with pytest.raises(ValueError, match="prefix"):
        build_trie([[1, 2], [1]])
    with pytest.raises(ValueError, match="prefix"):
        build_trie([[3, 4], [3, 4]])
    with pytest.raises(ValueError, match="empty"):
        build_trie([[]])
    assert needs_end_token([[1], [1, 2]]) and not needs_end_token([[1, 3], [2]])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BackboneConfig(kind="gpt2"), "backbone kind"),
        (lambda: BackboneConfig(d_model=30, num_heads=4), "divisible"),
        (lambda: BackboneConfig(num_layers=0), "num_layers"),
        (lambda: BackboneConfig(dropout=1.0), "dropout"),
        (lambda: LoraOptions(rank=-1), "rank"),
        (lambda: GeneratorConfig(indexing="semantic"), "indexing"),
        (lambda: GeneratorConfig(max_history=0), "max_history"),
        (lambda: GeneratorConfig(search="greedy"), "search"),
        (lambda: GeneratorConfig(templates=("no slot",)), "history"),
        (lambda: TrainConfig(epochs=0), "epochs"),
        (lambda: TrainConfig(lr=0), "lr"),
        (lambda: TrainConfig(warmup_ratio=1.0), "warmup_ratio"),
    ],
)
def test_configs_reject_bad_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_generator_config_round_trips_through_a_dict():
    config = GeneratorConfig(lora=LoraOptions(rank=4, target_modules=("q", "v")))
    assert GeneratorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown generator config keys"):
        GeneratorConfig.from_dict({"beams": 3})
