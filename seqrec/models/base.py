"""The one interface every small recommendation model (SRM) on the device implements.

Letters used in shape comments:
    B  batch (users)          L  history length (right-padded, 0 = padding)
    C  candidate items        D  hidden width
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SRMConfig:
    """Fields every SRM config shares; model configs subclass this."""

    num_items: int = 0  # catalogue size; item ids are 1..num_items, 0 is padding
    hidden_size: int = 64  # embedding width D
    max_len: int = 50  # longest history the model reads (older clicks are dropped)
    dropout: float = 0.1  # dropout on embeddings and hidden layers during training

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compact_history(history: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align the last `max_len` valid clicks of each row, dropping pads anywhere.

    Args:
        history: `[B, L_in]` item ids, 0 = padding at any position.
        max_len: how many of the most recent valid clicks to keep.
    Returns:
        `(compact, lengths)`: `[B, L]` right-padded ids with `L = clamp(max n_valid, 1,
        max_len)`, and `[B]` int64 number of kept clicks per row (0 for an empty history).
    """
    valid = history != 0  # [B, L_in]
    n_valid = valid.sum(dim=1)  # [B]
    lengths = n_valid.clamp(max=max_len)
    width = max(1, min(max_len, int(n_valid.max().item()) if history.numel() else 0))
    # Position of each valid click among the kept ones; older clicks fall below 0.
    rank = valid.long().cumsum(dim=1) - 1  # [B, L_in]
    pos = rank - (n_valid - lengths).unsqueeze(1)  # [B, L_in]
    keep = valid & (pos >= 0)
    # Dropped entries all land in a spare column that is cut off afterwards.
    target = torch.where(keep, pos, torch.full_like(pos, width))
    out = history.new_zeros(history.size(0), width + 1)
    out.scatter_(1, target, torch.where(keep, history, torch.zeros_like(history)))
    return out[:, :width], lengths


def gather_last(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last valid position (position 0 for an empty history).

    Args:
        hidden: `[B, L, D]` per-position states of right-padded sequences.
        lengths: `[B]` valid lengths.
    Returns:
        `[B, D]`.
    """
    index = (lengths - 1).clamp_min(0).view(-1, 1, 1).expand(-1, 1, hidden.size(-1))  # [B, 1, D]
    return hidden.gather(1, index).squeeze(1)  # [B, L, D] -> [B, D]


class SequentialRecommender(nn.Module):
    """Base class of the SRMs: subclasses implement `score` (and may override `score_all`).

    Histories are `[B, L]` int64 tensors of item ids; 0 is padding and may sit anywhere
    (models treat only the non-zero entries, in order, as the history). The project's own
    batches are right-padded: `[i_1, …, i_n, 0, …, 0]`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[SRMConfig]] = SRMConfig
    stateful: ClassVar[bool] = False  # True when init_state/step are implemented

    def __init__(self, config: SRMConfig) -> None:
        super().__init__()
        self.config = config

    def score(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of `items` as the next click after `history`.

        Args:
            history: `[B, L]` item ids, 0 = padding.
            items: `[B, C]` candidate item ids (0 entries are padding; their score is ignored).
        Returns:
            `[B, C]` float logits (higher = more likely).
        """
        raise NotImplementedError

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        """Logits of every item `0..num_items` (column 0 is padding): `[B, num_items + 1]`."""
        n = self.config.num_items + 1
        items = torch.arange(n, device=history.device).expand(history.size(0), n)
        return self.score(history, items)

    # Sequence-level training: the logits after every position of a window in one pass.
    def encode_positions(self, history: torch.Tensor) -> torch.Tensor:
        """User features after every click: `[B, L]` right-padded ids -> `[B, L, D]`.

        Row `t` reads clicks `0..t` only (causal), so it equals `encode(history[:, : t + 1])`.
        `history` holds valid clicks first and at most `max_len` columns (a training window);
        rows at pad positions are computed but meaningless.
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-position features")

    def item_features(self, items: torch.Tensor) -> torch.Tensor:
        """`[..., D]` features of item ids `[...]` that user features are dotted with."""
        return self.item_embedding(items)

    def all_item_features(self) -> torch.Tensor:
        """`[num_items + 1, D]` features of every item (row 0 is padding)."""
        device = next(self.parameters()).device
        return self.item_features(torch.arange(self.config.num_items + 1, device=device))

    def score_positions(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of candidates after every position: `[B, L]`, `[B, L, C]` -> `[B, L, C]`.

        `items[:, t]` are the candidates for the click after position `t`; the logits equal
        `score(history[:, : t + 1], items[:, t])`.
        """
        features = self.encode_positions(history)  # [B, L, D]
        # [B, L, C, D] @ [B, L, D, 1] -> [B, L, C]
        return (self.item_features(items) @ features.unsqueeze(-1)).squeeze(-1)

    def score_positions_all(self, history: torch.Tensor) -> torch.Tensor:
        """Logits of every item after every position: `[B, L]` -> `[B, L, num_items + 1]`."""
        return self.encode_positions(history) @ self.all_item_features().t()  # [B,L,D] @ [D,N]

    def loss(
        self, history: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Pointwise binary cross-entropy over `items`, ignoring padded (id 0) entries.

        Args:
            history: `[B, L]` item ids.
            items: `[B, C]` the positive(s) and negatives; 0 = padding.
            labels: `[B, C]` 1.0 for the positive, 0.0 for negatives.
        """
        logits = self.score(history, items)  # [B, C]
        mask = (items != 0).float()
        per_item = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (per_item * mask).sum() / mask.sum().clamp_min(1.0)

    # Carried per-user state, for models that can update it click by click (TTT4Rec).
    def init_state(self, batch_size: int = 1) -> Any:
        raise NotImplementedError(f"{type(self).__name__} keeps no carried state")

    def step(self, state: Any, items: torch.Tensor) -> tuple[Any, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} keeps no carried state")

    def click(
        self,
        state: Any,
        items: torch.Tensor,
        candidates: torch.Tensor,
        item_table: torch.Tensor,
        catalogue: bool = True,
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One click as a device handles it, for a model that carries a state:
        `step_with_surprise`, then the logits `[B, C]` of the held list's `candidates [B, C]`
        under the new state (what the next decision reads); one call, so an exported step
        graph runs once per click. `item_table [I, D]` is `all_item_features()`."""
        new_state, features, surprise = self.step_with_surprise(state, items, item_table, catalogue)
        scores = (item_table[candidates] @ features.unsqueeze(-1)).squeeze(-1)  # [B, C]
        return new_state, features, surprise, scores
