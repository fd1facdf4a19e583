"""The default generator: a decoder-only transformers model over item tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cloud.item_lm import ItemLMConfig, ItemSequenceGenerator, attribute_vocabulary
from cloud.loading import load_generator
from cloud.training import item_lm_train_config, train_item_lm
from shared.datasets.files import read_atomic_attributes
from shared.manifest import MANIFEST_NAME


def _attributes(num_items: int) -> list[tuple[str, ...]]:
    """Two attribute families shared by many items, one token unique to item 1."""
    rows = [(f"genre={i % 4}", f"decade={i % 3}") for i in range(1, num_items + 1)]
    rows[0] = rows[0] + ("word=unique",)
    return [()] + rows


def _create(
    num_items: int, attributes: bool = False, text: bool = False, **overrides
) -> ItemSequenceGenerator:
    """A tiny generator; `text` adds random 12-d item text vectors and leaves the last five
    items out of training (their id part masked)."""
    options = dict(hidden_size=16, num_layers=1, num_heads=2, d_ff=32, max_len=8)
    config = ItemLMConfig(num_items=num_items, **{**options, **overrides})
    item_attributes = _attributes(num_items) if attributes else None
    vectors, trained = None, None
    if text:
        vectors = np.random.default_rng(0).normal(size=(num_items + 1, 12)).astype(np.float32)
        trained = [np.arange(1, num_items - 4)]
    return ItemSequenceGenerator.create(
        config, item_attributes=item_attributes, seed=0, item_text=vectors, train_sequences=trained
    )


@pytest.fixture(
    scope="module",
    params=[
        (False, False, 0, False),
        (True, False, 0, False),
        (True, True, 0, False),
        (False, True, 3, False),
        (True, True, 2, True),
    ],
    ids=["ids", "attributes", "attributes+text", "text+match", "text+expert"],
)
def generator(request, tiny_data):
    attributes, text, match, expert = request.param
    generator = _create(
        tiny_data[0].num_items,
        attributes=attributes,
        text=text,
        text_match=match,
        text_expert=expert,
    )
    if match:
        with torch.no_grad():  # weights far from their start, so every term shows
            generator.model.match_weight.fill_(3.0)
            if expert:
                generator.model.expert_gate.fill_(0.5)
                generator.model.expert_scale.fill_(4.0)
        generator.refresh_model_version()
    return generator


def test_candidates_are_valid_distinct_unseen_and_ranked(generator):
    histories = [[5, 17, 33, 5], [1], list(range(1, 60))]
    for history, found in zip(histories, generator.generate(histories, n=40)):
        items = found.items.tolist()
        assert len(items) == 40 == len(set(items))
        assert min(items) >= 1 and max(items) <= generator.num_items
        assert not set(items) & set(history)  # the whole history, not only the last max_len
        assert np.all(np.diff(found.scores) <= 0) and np.all(found.scores <= 0)
        assert found.model_version == generator.model_version


def test_top_n_is_exact_over_the_items_outside_the_history(generator):
    """Brute force: the log-softmax of every item, history removed, sorted."""
    history = [9, 3, 27]
    found = generator.generate([history], n=15)[0]
    with torch.no_grad():
        logits = generator.model.score_all(torch.tensor([history]))[0, 1:]
    log_probs = torch.log_softmax(logits, dim=-1).numpy()
    log_probs[np.asarray(history) - 1] = -np.inf
    expected = np.argsort(-log_probs, kind="stable")[:15] + 1
    assert found.items.tolist() == expected.tolist()
    np.testing.assert_allclose(found.scores, log_probs[expected - 1], rtol=1e-5)


def test_top_n_matches_a_plain_forward_pass_over_a_long_history(generator):
    """Brute force without the model's own scoring path: the decoder run by hand on the last
    max_len clicks, the state after the newest click, every clicked item removed."""
    rng = np.random.default_rng(7)
    history = rng.integers(1, generator.num_items + 1, size=3 * generator.config.max_len)
    found = generator.generate([history], n=15)[0]
    model = generator.model.eval()
    with torch.no_grad():
        features = model.all_item_features()  # [N, D] the input and output item vectors
        window = torch.from_numpy(history[-generator.config.max_len :])[None]  # [1, L]
        hidden = model.lm.model(inputs_embeds=features[window]).last_hidden_state[0, -1]
        logits = hidden @ features.t()  # [N], item 0 (padding) included until the end
        if model.config.text_match:  # + w · cos(item text, mean text of the last k clicks)
            unit = torch.nn.functional.normalize(model.item_text, dim=-1)
            recent = unit[window[0, -model.config.text_match :]].mean(0)
            match = unit @ (recent / recent.norm())
            logits = logits + model.match_weight * match
        if model.config.text_expert:  # log((1 − g)·p_LM + g·softmax(s · match))
            g = torch.sigmoid(model.expert_gate)
            lm = torch.softmax(logits, dim=-1)
            text = torch.softmax(model.expert_scale * match, dim=-1)
            logits = torch.log((1 - g) * lm + g * text)
        log_probs = torch.log_softmax(logits[1:], dim=-1).numpy()
    log_probs[np.unique(history) - 1] = -np.inf  # the whole history, not only the window
    expected = np.argsort(-log_probs, kind="stable")[:15] + 1
    assert found.items.tolist() == expected.tolist()
    np.testing.assert_allclose(found.scores, log_probs[expected - 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("history", "n", "message"), [([], 5, "empty"), ([0], 5, "unknown item"),
                         ([1, 2], 0, "n must be"), ([1], 10**6, "larger than")])  # fmt: skip
def test_bad_requests_raise_value_error(generator, history, n, message):
    with pytest.raises(ValueError, match=message):
        generator.generate([history], n=n)


def test_every_position_equals_its_prefix(generator):
    """Sequence-level training is sound: position t of a window reads clicks 0..t only."""
    window = torch.tensor([[4, 8, 15, 16, 23, 42, 0, 0]])
    generator.model.eval()
    with torch.no_grad():
        per_position = generator.model.score_positions_all(window)[0]
        for t in range(6):
            prefix = generator.model.score_all(window[:, : t + 1])[0]
            torch.testing.assert_close(per_position[t], prefix, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip(generator, tmp_path):
    generator.save_pretrained(tmp_path / "gen")
    loaded = load_generator(tmp_path / "gen")
    assert isinstance(loaded, ItemSequenceGenerator)
    assert loaded.model_version == generator.model_version == loaded.refresh_model_version()
    assert loaded.attribute_names == generator.attribute_names
    before, after = (g.generate([[3, 1, 4]], n=10)[0] for g in (generator, loaded))
    assert before.items.tolist() == after.items.tolist()
    np.testing.assert_allclose(before.scores, after.scores, rtol=1e-6)
    meta = json.loads((tmp_path / "gen" / "generator.json").read_text())
    assert meta["kind"] == "item-lm" and meta["config"]["num_items"] == generator.num_items


def test_unknown_kind_is_refused(generator, tmp_path):
    generator.save_pretrained(tmp_path / "gen")
    meta_path = tmp_path / "gen" / "generator.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "kind": "diffusion"}))
    (tmp_path / "gen" / MANIFEST_NAME).unlink()  # past the manifest, to the kind check
    with pytest.raises(ValueError, match="unknown generator kind 'diffusion'"):
        load_generator(tmp_path / "gen")


def test_item_vectors_share_their_attributes():
    """With attributes, two items' vectors differ by their id embeddings only where they
    share every attribute; rare tokens (one item) are not in the vocabulary."""
    generator = _create(12, attributes=True)
    assert "word=unique" not in generator.attribute_names
    assert len(generator.attribute_names) == 4 + 3
    model = generator.model
    with torch.no_grad():
        model.item_embedding.weight.zero_()
        features = model.all_item_features()
    same = [i for i in range(2, 13) if i % 4 == 1 % 4 and i % 3 == 1 % 3]
    for item in same:  # identical attributes, zero id embeddings: identical vectors
        torch.testing.assert_close(features[item], features[1])
    assert not torch.allclose(features[2], features[1])


def test_training_beats_the_untrained_model_and_keeps_the_best_epoch(tiny_data):
    dataset, split = tiny_data
    generator = _create(dataset.num_items)
    untrained = generator.model_version
    users = split.stream_users
    histories = [split.train[u] for u in users]
    targets = split.valid_target[users]

    def recall(gen) -> float:
        lists = gen.generate(histories, n=20)
        return float(np.mean([t in c.items for c, t in zip(lists, targets)]))

    before = recall(generator)
    result = train_item_lm(
        generator, split, item_lm_train_config(epochs=12, select_metric="HR@20", progress=False)
    )
    assert generator.model_version != untrained
    assert result.best_metric == max(r["HR@20"] for r in result.epochs)
    assert recall(generator) == pytest.approx(result.best_metric)  # the kept weights
    assert recall(generator) > before + 0.1


def test_attribute_tokens_of_a_recbole_item_file():
    text = (
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story (1995)\t1995\tAnimation Children's Comedy\n"
        "2\tFace/Off\t\tAction\n"
    )
    attributes = read_atomic_attributes(text, "x.item")
    assert attributes["1"] == (
        "word=toy", "word=story", "year=1995", "decade=1990s",
        "genre=Animation", "genre=Children's", "genre=Comedy",
    )  # fmt: skip
    assert attributes["2"] == ("word=face", "word=off", "genre=Action")
    vocabulary, per_item = attribute_vocabulary([(), attributes["1"], attributes["2"]])
    assert vocabulary == [] and per_item == [[], [], []]  # no token shared by two items


def test_a_llama_configuration_works_the_same_way(tmp_path):
    generator = _create(60, kind="llama")
    assert type(generator.model.lm).__name__ == "LlamaForCausalLM"
    found = generator.generate([[4, 9]], n=10)[0]
    assert len(set(found.items.tolist())) == 10 and not {4, 9} & set(found.items.tolist())
    generator.save_pretrained(tmp_path / "llama")
    again = load_generator(tmp_path / "llama")
    assert again.generate([[4, 9]], n=10)[0].items.tolist() == found.items.tolist()
    assert again.model_version.startswith("llama-items-")


def test_id_dropout_trains_some_items_as_cold_ones_and_never_serves_that_way():
    num_items = 200
    generator = _create(num_items, attributes=True, text=True, id_dropout=0.5)
    model = generator.model
    with torch.no_grad():
        full = model.eval().all_item_features()
        content = full - model.item_embedding.weight * model.id_known  # attributes + text
        dropped = model.train().all_item_features()
    model.eval()
    as_cold = torch.isclose(dropped, content, atol=1e-7).all(dim=1)
    as_warm = torch.isclose(dropped, full, atol=1e-7).all(dim=1)
    assert bool((as_cold | as_warm).all())  # each item whole: its id part kept or dropped
    assert 0.3 < as_cold[1:].float().mean() < 0.7  # about half of them dropped
    with torch.no_grad():
        torch.testing.assert_close(model.all_item_features(), full)  # eval: never dropped
    with pytest.raises(ValueError, match="id_dropout must be in"):
        ItemLMConfig(num_items=5, id_dropout=1.0)


def test_placing_a_generator_on_a_device(generator, create_generator):
    """auto puts the item LM on the CPU here and keeps its lists; a GPU asked for where torch
    sees none, a prompt generator asked onto a GPU, or an unknown name is refused."""
    from cloud.loading import place_generator

    history = [[1, 2, 3]]
    before = generator.generate(history, n=5)[0]
    placed = place_generator(generator, "auto")
    assert placed is generator
    assert next(generator.model.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(placed.generate(history, n=5)[0].items, before.items)
    prompt = create_generator()
    assert place_generator(prompt, "auto") is prompt  # a CPU-only kind stays on the CPU
    for name in ("tpu", *(() if torch.cuda.is_available() else ("cuda:0",))):
        with pytest.raises(ValueError, match="device"):
            place_generator(generator, name)
    with pytest.raises(ValueError, match="CPU only"):
        prompt.to("cuda")
