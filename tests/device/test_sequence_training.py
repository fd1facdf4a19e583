"""Sequence-level training computes the per-prefix objective: the equivalence that justifies it.

For the same (history, target, negatives) triples, the loss of a window batch (one forward pass
per window) equals the mean of the per-prefix losses (one encoded history per triple), for every
SRM and every loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.losses import LOSSES, prefix_loss, window_loss
from seqrec.models import build_model
from seqrec.training import TrainConfig, ValidationSet, train_srm, trains_sequence_level
from shared.batching import WindowBatcher, assigned_starts, pad_histories, window_starts
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream

NUM_ITEMS = 60
MAX_LEN = 12

MODELS = {
    "ttt4rec-mb4": ("ttt4rec", {"num_heads": 2, "mini_batch_size": 4, "intermediate_size": 32}),
    "ttt4rec-mb1": ("ttt4rec", {"num_heads": 2, "mini_batch_size": 1, "intermediate_size": 32}),
    "sasrec": ("sasrec", {"num_heads": 2, "inner_size": 32}),
    "gru4rec": ("gru4rec", {"gru_hidden_size": 24}),
    "din": ("din", {}),
}


def sequences(seed: int = 0) -> list[np.ndarray]:
    """Users of 3 to 40 clicks (longer than a window, so windows overlap and start mid-way)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.arange(1, NUM_ITEMS + 1))[: rng.integers(3, 41)] for _ in range(9)]


def build(key: str):
    name, options = MODELS[key]
    torch.manual_seed(0)
    options = {"initializer_range": 0.3, **options} if name != "din" else options
    return build_model(name, num_items=NUM_ITEMS, hidden_size=16, max_len=MAX_LEN, dropout=0.0,
                       **options).double().eval()  # fmt: skip


def per_prefix_rows(batch, batcher):
    """The (history, target, negatives, own, log_q) of every trained position of `batch`."""
    histories, targets, negatives, own, log_q = [], [], [], [], []
    masks = batcher.own_item_mask(batch.users)
    for row in range(len(batch.users)):
        for t in np.flatnonzero(batch.targets[row]):
            histories.append(batch.inputs[row, : t + 1])  # the window's clicks up to t
            targets.append(batch.targets[row, t])
            negatives.append(batch.negatives[row, t])
            own.append(masks[row])
            log_q.append(batch.log_q[row, t] if batch.log_q is not None else None)
    return (
        torch.from_numpy(pad_histories(histories, MAX_LEN)),
        torch.tensor(targets),
        torch.from_numpy(np.stack(negatives)),
        torch.from_numpy(np.stack(own)),
        None if log_q[0] is None else torch.from_numpy(np.stack(log_q)),
    )


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("key", list(MODELS))
def test_window_loss_equals_the_mean_of_per_prefix_losses(key, loss):
    if key == "din" and loss == "ce":
        pytest.skip("DIN has no full-softmax scores (a test below checks the clear error)")
    model = build(key)
    batcher = WindowBatcher(
        sequences(), NUM_ITEMS, max_len=MAX_LEN, stride=5, num_negatives=0 if loss == "ce" else 4,
        batch_size=64, seed=1, sampler="popularity" if loss == "sampled-softmax" else "uniform",
    )  # fmt: skip
    batch = next(iter(batcher))
    assert batch.num_targets == sum(len(s) - 1 for s in batcher.sequences)  # one batch: all pairs
    own = batcher.own_item_mask(batch.users)
    with torch.no_grad():
        window = window_loss(model, batch, loss, own)
        history, targets, negatives, own_rows, log_q = per_prefix_rows(batch, batcher)
        prefix = prefix_loss(model, history, targets, negatives, loss, own_rows, log_q)
    assert torch.isfinite(window)
    assert abs(window.item() - prefix.item()) < 1e-5, (window.item(), prefix.item())


def test_windows_train_every_pair_once_with_the_most_history_they_can():
    for length in (2, 5, 13, 40):
        for stride in (1, 5, 12):
            starts = window_starts(length, MAX_LEN, stride)
            assigned = assigned_starts(starts, length, MAX_LEN)
            positions = np.arange(length - 1)
            assert starts[0] == 0 and starts[-1] == max(0, length - 1 - MAX_LEN)
            assert np.all(np.diff(starts) <= stride)
            width = min(MAX_LEN, length - 1)
            assert np.all((assigned <= positions) & (positions < assigned + width))
            # at least `max_len - stride` clicks of history inside the window, or all of it
            history = positions - assigned + 1
            assert np.all((history >= width - stride + 1) | (assigned == 0))


def test_negatives_are_never_the_users_items_and_shared_ones_are_masked():
    seqs = sequences(3)
    for shared in (False, True):
        batcher = WindowBatcher(seqs, NUM_ITEMS, max_len=MAX_LEN, num_negatives=8,
                                batch_size=4, seed=0, shared_negatives=shared)  # fmt: skip
        for batch in batcher:
            for row, user in enumerate(batch.users):
                drawn = batch.negatives[row][batch.negatives[row] != 0]
                assert not np.isin(drawn, seqs[user]).any()
            assert np.all(batch.negatives[batch.targets == 0] == 0)


def test_din_refuses_the_full_softmax_with_a_clear_error():
    model = build("din")
    with pytest.raises(NotImplementedError, match="sampled-softmax"):
        model.score_positions_all(torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize("loss", LOSSES)
def test_sequence_training_learns_on_synthetic_data(loss):
    data = make_synthetic(num_users=60, num_items=150, num_topics=4, min_length=20, max_length=40,
                          seed=5)  # fmt: skip
    split = split_stream(data, test_window=10)
    users = split.stream_users
    valid = ValidationSet.build([split.train[u] for u in users], split.valid_target[users],
                                split.num_items, max_len=20)  # fmt: skip
    torch.manual_seed(0)
    model = build_model("sasrec", num_items=split.num_items, hidden_size=16, max_len=20)
    assert trains_sequence_level(model)
    config = TrainConfig(epochs=4, max_len=20, loss=loss, windows_per_batch=8, progress=False)
    result = train_srm(model, split.train, valid, config)
    losses = [record["loss"] for record in result.epochs]
    assert losses[-1] < losses[0]
    assert result.best_metric > 0.0
