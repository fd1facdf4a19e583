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
from simulations.replay.engine import ROW_CHUNK

L2 = 1e-3  # on the weights; the features are all in [0, 1]


MAX_EXAMPLES = 200_000  # held lists the fit reads at most: 8 weights need no more


def fusion_examples(
    data: ReplayData, max_examples: int = MAX_EXAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features `[P, N, F]` (float32), showable slots `[P, N]` and the clicked item's slot
    `[P]` of every held list whose showable slots include the click (a seeded sample of
    `max_examples` of them, in stream order, when there are more)."""
    steps, held = data.held_states()
    keep = np.zeros((data.num_users, len(steps)), dtype=bool)  # [U, S]
    for rows in data.row_chunks(len(steps)):
        r = rows[:, None]
        hit = data.lists.items[r, held] == data.stream.targets[r, steps][..., None]
        keep[rows] = (hit & data.valid_at(r, steps, held)).any(axis=-1)
    users, states = np.nonzero(keep)  # row-major: the order of the whole-stream arrays
    if len(users) > max_examples:
        chosen = np.random.default_rng(seed).choice(len(users), max_examples, replace=False)
        chosen.sort()
        users, states = users[chosen], states[chosen]
    s, h = steps[states], held[states]
    valid = data.valid_at(users, s, h)  # [P, N]
    hit = (data.lists.items[users, h] == data.stream.targets[users, s][:, None]) & valid
    features = np.empty((*valid.shape, len(FUSION_FEATURES)), dtype=np.float32)
    for lo in range(0, len(users), ROW_CHUNK):  # float64 temporaries of one chunk at a time
        part = slice(lo, lo + ROW_CHUNK)
        u, t, j = users[part], s[part], h[part]
        features[part] = fusion_features(
            data.lists.scores[u, j].astype(np.float64), data.logits_at(u, t, j), valid[part], t - j
        )
    return features, valid, hit.argmax(axis=-1)


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
