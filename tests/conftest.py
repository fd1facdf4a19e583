"""Fixtures shared across test folders."""

from __future__ import annotations

import logging

import pytest
import torch

from cloud.item_lm import ItemLMConfig, ItemSequenceGenerator
from cloud.training import item_lm_train_config, train_item_lm
from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream

SERVED_N = 10  # candidates per request the served tiny generator is sized for (120 items)


def train_tiny_generator(split, n: int, epochs: int = 2) -> ItemSequenceGenerator:
    """A tiny item-LM generator (the default kind) for `split`'s catalogue after a few epochs
    (about a second); `n` is the list length its validation Recall@n selects by."""
    config = ItemLMConfig(
        num_items=split.num_items, hidden_size=16, num_layers=1, num_heads=2, d_ff=32, max_len=8
    )
    generator = ItemSequenceGenerator.create(config, seed=0)
    train = item_lm_train_config(epochs=epochs, select_metric=f"HR@{n}", progress=False)
    train_item_lm(generator, split, train)
    return generator


def build_tiny_generator(n: int = SERVED_N) -> ItemSequenceGenerator:
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
def served_generator() -> ItemSequenceGenerator:
    """The tiny generator the gRPC server and client tests serve (one per test session)."""
    return build_tiny_generator()


@pytest.fixture(autouse=True)
def _restore_logging():
    """Undo what a test's `configure_json_logging` (the serve CLI run in process, say) did to
    the global loggers: a handler left on a test's closed capture stream would break the
    logging of every later test."""
    names = ("lsc4rec", "py.warnings")
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate,
               logging.getLogger(name).level)
        for name in names
    }  # fmt: skip
    yield
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.propagate = handlers, propagate
        logger.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
def manifest_warnings():
    """The records the manifest check logs (`lsc4rec.manifest`), whoever else handles them
    (pytest's log capture or Python's last-resort handler)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("lsc4rec.manifest")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
