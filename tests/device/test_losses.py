"""The training losses against values computed by hand on a 3-item catalogue.

The equivalence test (`test_sequence_training.py`) runs the same loss functions on both of its
sides, so a wrong formula passes it; these numbers come from the definitions alone.
"""

from __future__ import annotations

import math

import pytest
import torch

from seqrec.losses import bce_loss, full_softmax_loss, sampled_softmax_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_is_the_mean_over_the_target_and_its_unmasked_negatives():
    pos = torch.tensor([2.0, -0.5], dtype=torch.float64)
    neg = torch.tensor([[0.5, -1.0], [3.0, 1.5]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # one slot padded
    # -log σ(pos) for the targets, -log(1 − σ(neg)) for the three real negatives
    terms = [softplus(-2.0), softplus(0.5), softplus(0.5), softplus(-1.0), softplus(3.0)]
    assert bce_loss(pos, neg, mask).item() == pytest.approx(sum(terms) / 5, rel=1e-12)


def test_sampled_softmax_subtracts_log_k_q_from_the_negatives():
    pos = torch.tensor([1.0], dtype=torch.float64)
    neg = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    q = torch.tensor([[0.5, 0.25]], dtype=torch.float64)  # sampling probabilities, K = 2
    # corrected negatives: 2 − log(2·0.5) = 2 and 0 − log(2·0.25) = log 2
    expected = math.log(math.exp(1.0) + math.exp(2.0) + 2.0) - 1.0
    got = sampled_softmax_loss(pos, neg, mask, torch.log(q))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # without log-Q: the plain softmax over the target and its negatives
    plain = math.log(math.exp(1.0) + math.exp(2.0) + 1.0) - 1.0
    assert sampled_softmax_loss(pos, neg, mask, None).item() == pytest.approx(plain, rel=1e-12)


def test_sampled_softmax_ignores_masked_negatives():
    pos = torch.tensor([0.0], dtype=torch.float64)
    neg = torch.tensor([[1.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    expected = math.log(1.0 + math.e)
    assert sampled_softmax_loss(pos, neg, mask, None).item() == pytest.approx(expected, rel=1e-12)


def test_full_softmax_masks_the_users_other_items_but_not_the_target():
    # columns: padding, item 1, item 2, item 3
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.5, 0.0, 1.0, -1.0]], dtype=torch.float64)
    targets = torch.tensor([1, 3])
    own = torch.tensor([[True, True, False, True], [True, False, False, True]])
    # row 0: item 3 is the user's and masked, the target 1 stays -> softmax over items 1, 2
    row0 = math.log(math.exp(1.0) + math.exp(2.0)) - 1.0
    # row 1: the target 3 is the user's own item, it stays; items 1 and 2 compete
    row1 = math.log(math.exp(0.0) + math.exp(1.0) + math.exp(-1.0)) + 1.0
    got = full_softmax_loss(logits, targets, own)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-12)
