"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest
import torch

from cloud.config import BackboneConfig, GeneratorConfig
from cloud.generator import CandidateGenerator
from cloud.training import TrainConfig, train_generator
from device.models.ttt4rec import TTT4Rec, TTT4RecConfig
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream

SERVED_N = 10  # candidates per request the served tiny generator is sized for (120 items)


def train_tiny_generator(split, n: int, samples_per_epoch: int = 48) -> CandidateGenerator:
    """A tiny T5 generator for `split`'s catalogue after a few training steps (about a second)."""
    backbone = BackboneConfig(d_model=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_ff=32)
    config = GeneratorConfig(backbone=backbone, max_history=8, num_beams=n)
    generator = CandidateGenerator.create(config, split.train, split.num_items, seed=0)
    train = TrainConfig(
        epochs=1,
        batch_size=16,
        samples_per_epoch=samples_per_epoch,
        max_eval_users=4,
        eval_n=min(n, 10),
        progress=False,
    )
    train_generator(generator, split, train)
    return generator


def build_tiny_generator(n: int = SERVED_N) -> CandidateGenerator:
    """The tiny generator trained on its own small synthetic data set."""
    torch.set_num_threads(1)
    dataset = make_synthetic(num_users=30, num_items=120, min_length=16, max_length=40, seed=3)
    return train_tiny_generator(split_stream(dataset), n)


def build_tiny_ttt4rec(num_items: int, initializer_range: float = 0.5) -> TTT4Rec:
    """A tiny TTT4Rec with random weights; a wide init spreads its order away from the LLM's."""
    torch.manual_seed(0)
    config = TTT4RecConfig(
        num_items=num_items,
        hidden_size=16,
        num_heads=2,
        mini_batch_size=4,
        intermediate_size=32,
        initializer_range=initializer_range,
    )
    return TTT4Rec(config).eval()


@pytest.fixture(scope="session")
def tiny_generator():
    """`train_tiny_generator` for tests that need a generator on their own data."""
    return train_tiny_generator


@pytest.fixture(scope="session")
def tiny_ttt4rec():
    """`build_tiny_ttt4rec`, the untrained TTT4Rec the session and simulation tests use."""
    return build_tiny_ttt4rec


@pytest.fixture(scope="session")
def served_generator() -> CandidateGenerator:
    """The tiny generator the gRPC server and client tests serve (one per test session)."""
    return build_tiny_generator()
