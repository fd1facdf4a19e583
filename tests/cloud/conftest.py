"""Tiny data and tiny generators shared by the cloud tests (scoped to stay fast)."""

from __future__ import annotations

import pytest
import torch

from cloud.config import BackboneConfig, GeneratorConfig
from cloud.generator import CandidateGenerator
from cloud.training import TrainConfig, train_generator
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream

TINY_BACKBONE = {
    "d_model": 16,
    "num_layers": 1,
    "num_decoder_layers": 1,
    "num_heads": 2,
    "d_ff": 32,
}
COMBINATIONS = [
    ("t5", "atomic"),
    ("t5", "sequential"),
    ("llama", "atomic"),
    ("llama", "sequential"),
]


def _tiny_config(kind: str = "t5", indexing: str = "atomic", **overrides) -> GeneratorConfig:
    backbone = BackboneConfig(kind=kind, **TINY_BACKBONE)
    return GeneratorConfig(backbone=backbone, indexing=indexing, max_history=8, **overrides)


def _tiny_train_config(**overrides) -> TrainConfig:
    options = dict(
        epochs=1, batch_size=16, samples_per_epoch=48, max_eval_users=6, eval_n=10, progress=False
    )
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data():
    """A small drifting-interest data set (30 users, 120 items) and its stream split."""
    dataset = make_synthetic(num_users=30, num_items=120, min_length=16, max_length=40, seed=3)
    return dataset, split_stream(dataset)


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: a tiny `GeneratorConfig` for a backbone kind and an indexing."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_train_config():
    """Factory: a `TrainConfig` of a few steps."""
    return _tiny_train_config


def _create(tiny_data, kind: str, indexing: str) -> CandidateGenerator:
    dataset, split = tiny_data
    return CandidateGenerator.create(
        _tiny_config(kind, indexing),
        split.train,
        dataset.num_items,
        dataset_name=dataset.name,
        item_titles=dataset.item_titles,
    )


@pytest.fixture(scope="session")
def create_generator(tiny_data):
    """Factory: an untrained tiny generator."""
    return lambda kind="t5", indexing="atomic": _create(tiny_data, kind, indexing)


@pytest.fixture(scope="module", params=COMBINATIONS, ids=lambda p: f"{p[0]}-{p[1]}")
def trained(request, tiny_data):
    """A tiny generator of each backbone and indexing after a few training steps."""
    kind, indexing = request.param
    generator = _create(tiny_data, kind, indexing)
    train_generator(generator, tiny_data[1], _tiny_train_config())
    return generator
