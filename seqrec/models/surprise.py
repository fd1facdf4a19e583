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

from shared.device_format import DRIFT_WINDOW, SURPRISE_COLUMNS  # noqa: F401 (re-exported)


def catalogue_surprise(
    logits: torch.Tensor, click_logit: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The click's surprisal and its rank share over the catalogue.

    Args:
        logits: `[B, I − 1]` the SRM's logits of every item 1..I−1 (no padding column).
        click_logit: `[B]` the logit of the click (one of those items).
    Returns:
        `[B]` −log softmax of the click over the items, `[B]` share of the items scored
        strictly above it.
    """
    nll = torch.logsumexp(logits, dim=1) - click_logit
    above = (logits > click_logit.unsqueeze(1)).to(logits.dtype).mean(dim=1)
    return nll, above


def feature_drift(click_features: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    """`[B]` cosine distance between `F_t(click) [B, D]` and the mean of the last clicks'
    `F_t` (`recent [B, R, D]`, empty rows all zero); 0 before any click (nothing to drift from).

    The cosine is blind to scale, so the sum of the rows stands in for their mean and the
    number of filled rows is never needed (fewer nodes in the exported step graph).
    """
    total = recent.sum(dim=1)  # [B, D]
    norm = torch.linalg.vector_norm(total, dim=-1)  # [B]
    click_norm = torch.linalg.vector_norm(click_features, dim=-1)
    dot = (click_features * total).sum(dim=-1)
    cosine = dot / (click_norm.clamp_min(1e-8) * norm.clamp_min(1e-8))
    return torch.where(norm > 0, 1.0 - cosine, torch.zeros_like(cosine))


def push_recent(recent: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The buffer with `features [B, D]` appended as the newest row (the oldest drops out),
    for users whose `mask [B]` is True; the others keep theirs."""
    shifted = torch.cat([recent[:, 1:], features.unsqueeze(1)], dim=1)  # [B, R, D]
    return torch.where(mask[:, None, None], shifted, recent)


def click_surprise(
    feature: torch.Tensor,
    recent: torch.Tensor,
    table: torch.Tensor,
    items: torch.Tensor,
    catalogue: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first four surprise columns of clicks `items [B]` for users whose state before the
    click has `feature [B, D]` and `recent [B, R, D]`, with `table [I, D]` the F_t of every
    item: `(logit, nll, catalogue_rank, drift)`, each `[B]`. Without `catalogue` the nll and
    rank share are NaN and the `[B, D] × [D, I]` product is skipped."""
    if catalogue:
        logits = feature @ table[1:].t()  # [B, I − 1]: items 1..I−1
        # the click's logit from the same product, so it never ranks above itself
        logit = logits.gather(1, (items - 1).clamp_min(0).unsqueeze(1)).squeeze(1)  # [B]
        nll, rank = catalogue_surprise(logits, logit)
    else:
        logit = (feature * table[items]).sum(dim=-1)  # [B]
        nll = rank = torch.full_like(logit, float("nan"))
    return logit, nll, rank, feature_drift(table[items], recent)


def stack_surprise(
    logit: torch.Tensor,
    nll: torch.Tensor,
    rank: torch.Tensor,
    drift: torch.Tensor,
    inner_loss: torch.Tensor,
) -> torch.Tensor:
    """`[B, 5]` in `SURPRISE_COLUMNS` order."""
    return torch.stack([logit, nll, rank, drift, inner_loss], dim=1)
