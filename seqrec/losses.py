"""Training losses of the SRMs, for one example per prefix and for whole windows.

Both paths reduce to the same rows: one row per (history → target) pair with the target's
logit and the logits of its negatives (or of the whole catalogue). A window batch gives every
row of a window from one forward pass (`SequentialRecommender.score_positions`); a prefix batch
encodes each history on its own. On the same rows the two losses are equal, which is what
makes sequence-level training a faster way to train the same objective.

Losses (`LOSSES`):
    bce              binary cross-entropy, the target against K sampled negatives (the TTT4Rec
                     paper's 1:4): the mean over every (row, item) entry.
    sampled-softmax  softmax cross-entropy over the target and K sampled negatives, the
                     negatives' logits corrected by −log(K·q) for their sampling probability q
                     (the log-Q correction; a constant shift under uniform sampling).
    ce               softmax cross-entropy over the whole catalogue; the user's other items are
                     masked out, so they are never treated as negatives.

Letters in shape comments: B windows, W window length, M rows (pairs), K negatives,
N num_items + 1, L history length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shared.batching import TrainBatch, WindowBatch

LOSSES = ("bce", "sampled-softmax", "ce")


def bce_loss(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over every entry: `pos` `[M]` (label 1), `neg` `[M, K]` (label 0) where masked in."""
    pos_terms = F.softplus(-pos)  # -log σ(pos)
    neg_terms = F.softplus(neg) * neg_mask  # -log(1 − σ(neg))
    count = pos.numel() + neg_mask.sum()
    return (pos_terms.sum() + neg_terms.sum()) / count.clamp_min(1.0)


def sampled_softmax_loss(
    pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor, log_q: torch.Tensor | None
) -> torch.Tensor:
    """Mean softmax cross-entropy of the target among itself and its negatives `[M, K]`."""
    if log_q is not None:
        neg = neg - (log_q + math.log(max(neg.shape[-1], 1)))
    neg = neg.masked_fill(~neg_mask.bool(), float("-inf"))
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)  # [M, 1 + K]
    return (torch.logsumexp(logits, dim=-1) - pos).mean()


def full_softmax_loss(
    logits: torch.Tensor, targets: torch.Tensor, own: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over the catalogue: `logits` `[M, N]`, `targets` `[M]`, `own` `[M, N]`
    True at the user's items (and padding), which are masked out except the target itself."""
    exclude = own.clone()
    exclude[torch.arange(len(targets), device=targets.device), targets] = False
    return F.cross_entropy(logits.masked_fill(exclude, float("-inf")), targets)


def _sampled(
    kind: str, logits: torch.Tensor, negatives: torch.Tensor, log_q: torch.Tensor | None
) -> torch.Tensor:
    """BCE or sampled softmax on `logits` `[M, 1 + K]` (column 0 the target)."""
    pos, neg, neg_mask = logits[:, 0], logits[:, 1:], (negatives != 0).to(logits.dtype)
    if kind == "bce":
        return bce_loss(pos, neg, neg_mask)
    return sampled_softmax_loss(pos, neg, neg_mask, log_q)


def window_loss(model, batch: WindowBatch, kind: str, own=None) -> torch.Tensor:
    """The loss of every trained position of a window batch, from one forward pass.

    Args:
        model: an SRM with `score_positions` (and `score_positions_all` for "ce").
        batch: windows with their targets and negatives.
        kind: one of `LOSSES`.
        own: `[B, N]` bool own-item mask of each window's user (needed for "ce").
    """
    device = model_device(model)
    inputs = torch.from_numpy(batch.inputs).to(device)
    targets = torch.from_numpy(batch.targets).to(device)  # [B, W]
    trained = targets != 0  # [B, W]
    if kind == "ce":
        logits = model.score_positions_all(inputs)[trained]  # [B, W, N] -> [M, N]
        own = torch.from_numpy(own).to(device)
        rows = own.unsqueeze(1).expand(-1, targets.shape[1], -1)[trained]
        return full_softmax_loss(logits, targets[trained], rows)
    negatives = torch.from_numpy(batch.negatives).to(device)  # [B, W, K]
    items = torch.cat([targets.unsqueeze(-1), negatives], dim=-1)  # [B, W, 1 + K]
    logits = model.score_positions(inputs, items)[trained]  # [M, 1 + K]
    log_q = None if batch.log_q is None else torch.from_numpy(batch.log_q).to(device)[trained]
    return _sampled(kind, logits, negatives[trained], log_q)


def prefix_loss(
    model,
    history: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    kind: str,
    own: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same loss with one encoded history per row.

    Args:
        history: `[M, L]` right-padded histories.
        targets: `[M]` next clicks.
        negatives: `[M, K]` sampled negatives (0 = none).
        kind: one of `LOSSES`.
        own: `[M, N]` own-item masks (for "ce").
        log_q: `[M, K]` sampling log-probabilities (for "sampled-softmax").
    """
    if kind == "ce":
        return full_softmax_loss(model.score_all(history), targets, own)
    items = torch.cat([targets.unsqueeze(-1), negatives], dim=-1)  # [M, 1 + K]
    return _sampled(kind, model.score(history, items), negatives, log_q)


def batch_loss(model, batch, kind: str, own=None) -> tuple[torch.Tensor, int]:
    """The loss of a training batch of either kind and the number of pairs it covers."""
    if isinstance(batch, WindowBatch):
        return window_loss(model, batch, kind, own), batch.num_targets
    if not isinstance(batch, TrainBatch) or kind != "bce":
        raise ValueError(f"per-prefix batches train with loss bce only, got {kind!r}")
    history, items, labels = (t.to(model_device(model)) for t in batch.to_torch())
    return model.loss(history, items, labels), len(items)


def model_device(model) -> torch.device:
    """Where the model's parameters are (CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
