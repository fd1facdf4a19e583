"""How unexpected a click is to the SRM, measured before the model takes it in (docs/design.md §4).

After each click the device already knows, from its own model:

    logit           the SRM's score of the click, `F_s · F_t(click)`, with the state before it
    nll             −log softmax of that score over the whole catalogue (surprisal, nats)
    catalogue_rank  share of the catalogue the SRM scored above the click (0 = its top item)
    drift           1 − cos(F_t(click), mean F_t of the last few clicks): a move in item space
    inner_loss      TTT-Linear's self-supervised loss of the click under the current fast
                    weights (0 for models without TTT layers)

Every function here is plain tensor code without branching, so TTT4Rec's step graph exports
it to ONNX together with the state update.

Letters used in shape comments:
    B  batch (users)    I  num_items + 1 (column 0 = padding)    D  width    R  recent clicks
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SURPRISE_COLUMNS: tuple[str, ...] = ("logit", "nll", "catalogue_rank", "drift", "inner_loss")


def catalogue_surprise(
    logits: torch.Tensor, clicks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The click's logit, its surprisal and its rank share over the catalogue.

    Args:
        logits: `[B, I]` the SRM's logits of every item (column 0, padding, is ignored).
        clicks: `[B]` clicked ids (>= 1).
    Returns:
        `[B]` logit, `[B]` −log softmax over items 1..I−1, `[B]` share of those items
        scored strictly above the click.
    """
    items = logits[:, 1:]  # [B, I − 1]
    logit = logits.gather(1, clicks.view(-1, 1)).squeeze(1)  # [B]
    nll = torch.logsumexp(items, dim=1) - logit
    above = (items > logit.unsqueeze(1)).to(logits.dtype).mean(dim=1)
    return logit, nll, above


def recent_mean(recent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the filled rows of a `[B, R, D]` buffer (empty rows are all zero) and `[B]`
    whether any row is filled."""
    filled = recent.abs().sum(dim=-1) > 0  # [B, R]
    count = filled.sum(dim=1, keepdim=True).clamp_min(1).to(recent.dtype)  # [B, 1]
    return recent.sum(dim=1) / count, filled.any(dim=1)


def feature_drift(click_features: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    """`[B]` cosine distance between `F_t(click) [B, D]` and the mean of the last clicks'
    `F_t` (`recent [B, R, D]`); 0 before any click (nothing to drift from)."""
    mean, any_filled = recent_mean(recent)
    cosine = F.cosine_similarity(click_features, mean, dim=-1, eps=1e-8)
    return torch.where(any_filled, 1.0 - cosine, torch.zeros_like(cosine))


def push_recent(recent: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The buffer with `features [B, D]` appended as the newest row (the oldest drops out),
    for users whose `mask [B]` is True; the others keep theirs."""
    shifted = torch.cat([recent[:, 1:], features.unsqueeze(1)], dim=1)  # [B, R, D]
    return torch.where(mask[:, None, None], shifted, recent)


def stack_surprise(
    logit: torch.Tensor,
    nll: torch.Tensor,
    rank: torch.Tensor,
    drift: torch.Tensor,
    inner_loss: torch.Tensor,
) -> torch.Tensor:
    """`[B, 5]` in `SURPRISE_COLUMNS` order."""
    return torch.stack([logit, nll, rank, drift, inner_loss], dim=1)
