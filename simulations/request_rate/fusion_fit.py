"""Fit the learned fusion (`device.fusion.LearnedFusion`) on the validation stream.

Every held list the stream can show is a training example: each step `t` with each list
`j <= t` made before it (age `t − j`), whenever the clicked item is one of its showable slots.
The loss is listwise: the softmax over the list's showable slots of `w · φ(slot)` should put
its mass on the clicked item (cross-entropy), plus a small L2 penalty. The loss is convex in
the 8 weights, so L-BFGS finds its minimum in a few dozen steps. The features are computed by
the device's own `fusion_features`, so what is fitted is what the device computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from device.fusion import FUSION_FEATURES, LearnedFusion, fusion_features
from simulations.replay import ReplayData

L2 = 1e-3  # on the weights; the features are all in [0, 1]


def fusion_examples(data: ReplayData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features `[P, N, F]` (float32), showable slots `[P, N]` and the clicked item's slot
    `[P]` of every held list whose showable slots include the click."""
    steps, held = data.held_states()
    items = data.lists.items[:, held]  # [U, S, N]
    valid = data.valid[:, steps, held]  # [U, S, N]
    hit = (items == data.stream.targets[:, steps, None]) & valid  # [U, S, N]
    keep = hit.any(axis=-1)  # [U, S]
    age = np.broadcast_to(steps - held, keep.shape)[keep]  # [P]
    features = fusion_features(
        data.lists.scores[:, held][keep].astype(np.float64),
        data.logits[:, steps, held][keep],
        valid[keep],
        age,
    ).astype(np.float32)
    return features, valid[keep], hit[keep].argmax(axis=-1)


def fit_fusion(
    features: np.ndarray, valid: np.ndarray, target: np.ndarray, l2: float = L2
) -> tuple[np.ndarray, float]:
    """The weights minimising the listwise loss, and the loss they reach."""
    x = torch.from_numpy(features)  # [P, N, F]
    mask = torch.from_numpy(~valid)
    y = torch.from_numpy(target)
    w = torch.zeros(x.shape[-1], dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        scores = (x @ w).masked_fill(mask, float("-inf"))  # [P, N]
        return torch.nn.functional.cross_entropy(scores, y) + l2 * (w * w).sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        final = float(objective())
    return w.detach().numpy().astype(np.float64), final


def fit_learned_fusion(valid: ReplayData) -> tuple[LearnedFusion, dict[str, Any]]:
    """`LearnedFusion` fitted on the validation stream, and notes (weights by feature name,
    examples, the loss reached)."""
    features, showable, target = fusion_examples(valid)
    weights, loss = fit_fusion(features, showable, target)
    fusion = LearnedFusion(weights=tuple(weights))
    notes = {
        "weights": dict(zip(FUSION_FEATURES, fusion.weights)),
        "examples": int(len(target)),
        "valid_loss": loss,
    }
    return fusion, notes
