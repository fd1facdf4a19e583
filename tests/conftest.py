"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest
import torch

from cloud.config import BackboneConfig, GeneratorConfig
from cloud.generator import CandidateGenerator
from cloud.training import TrainConfig, train_generator
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream

SERVED_N = 10  # candidates per request the served tiny generator is sized for (120 items)


def build_tiny_generator(n: int = SERVED_N) -> CandidateGenerator:
    """A tiny T5 generator after a few training steps on synthetic data (about a second)."""
    torch.set_num_threads(1)
    dataset = make_synthetic(num_users=30, num_items=120, min_length=16, max_length=40, seed=3)
    split = split_stream(dataset)
    backbone = BackboneConfig(d_model=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_ff=32)
    config = GeneratorConfig(backbone=backbone, max_history=8, num_beams=n)
    generator = CandidateGenerator.create(config, split.train, dataset.num_items, seed=0)
    train = TrainConfig(
        epochs=1, batch_size=16, samples_per_epoch=48, max_eval_users=6, eval_n=n, progress=False
    )
    train_generator(generator, split, train)
    return generator


@pytest.fixture(scope="session")
def served_generator() -> CandidateGenerator:
    """The tiny generator the gRPC server and client tests serve (one per test session)."""
    return build_tiny_generator()
