"""Training: the loss falls, the best validation epoch is kept, and seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.training import make_batch, prefix_examples, train_generator


def test_prefix_examples_cover_every_next_item():
    examples = prefix_examples([np.array([4, 5, 6]), np.array([7]), np.array([1, 2])])
    assert examples.tolist() == [[0, 1], [0, 2], [2, 1]]


def test_decoder_only_batch_labels_only_the_answer(create_generator):
    gen = create_generator("llama", "sequential")
    batch = make_batch(gen, [np.array([1, 2, 3])], [12])
    labelled = batch["labels"][0][batch["labels"][0] >= 0].tolist()
    assert labelled == gen.item_tokens[11]  # the digits of item 12's number, then EOS
    assert labelled[-1] == gen.tokenizer.eos_token_id


def test_training_lowers_loss_and_keeps_best_epoch(create_generator, tiny_data, tiny_train_config):
    _, split = tiny_data
    gen = create_generator("t5", "atomic")
    before = gen.model_version
    config = tiny_train_config(epochs=3, samples_per_epoch=200, lr=1e-2, max_eval_users=0)
    report = train_generator(gen, split, config)
    assert report.losses[-1] < report.losses[0]
    assert len(report.recalls) == 3 and report.best_recall == max(report.recalls)
    assert report.best_epoch == int(np.argmax(report.recalls))
    assert gen.model_version != before


def test_same_seed_same_model(create_generator, tiny_data, tiny_train_config):
    _, split = tiny_data
    versions = []
    for _ in range(2):
        gen = create_generator("t5", "sequential")
        train_generator(gen, split, tiny_train_config(seed=7))
        versions.append(gen.model_version)
    assert versions[0] == versions[1]


def test_training_needs_examples(create_generator, tiny_data):
    _, split = tiny_data
    gen = create_generator()
    empty = type(split)(
        split.test_window,
        split.num_items,
        [np.array([1])],
        np.zeros(1, np.int64),
        [np.zeros(0, np.int64)],
        np.zeros(0, np.int64),
    )
    with pytest.raises(ValueError, match="no training examples"):
        train_generator(gen, empty)
