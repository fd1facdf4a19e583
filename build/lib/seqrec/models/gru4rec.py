"""GRU4Rec (Hidasi et al., ICLR 2016), in the next-item form RecBole and the SRM papers use.

Layout: item embedding → dropout → `num_layers`-layer GRU over the last `max_len` valid
clicks → hidden state at the last valid click → linear to D = user feature `F`; the score
of item `i` is `F · E[i]` with the same item embedding table `E`.

Letters used in shape comments:
    B  batch (users)          L  history length after compaction (<= max_len)
    C  candidate items        D  hidden width (embedding)
    G  GRU hidden width       N  num_items + 1 (the embedding table, row 0 = padding)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqrec.models.base import SequentialRecommender, SRMConfig, compact_history, gather_last


@dataclass
class GRU4RecConfig(SRMConfig):
    """GRU4Rec hyper-parameters."""

    num_layers: int = 1  # stacked GRU layers; one is the usual choice for session data
    gru_hidden_size: int = 128  # GRU state width G; wider than D as in RecBole's default
    initializer_range: float = 0.02  # std of the normal init of embeddings and the head

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.gru_hidden_size < 1:
            raise ValueError(f"gru_hidden_size must be >= 1, got {self.gru_hidden_size}")
        if self.initializer_range <= 0.0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range}")


class GRU4Rec(SequentialRecommender):
    """Recurrent session-based recommendation; see the module docstring."""

    name = "gru4rec"
    config_class = GRU4RecConfig

    def __init__(self, config: GRU4RecConfig) -> None:
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.num_items + 1, config.hidden_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(
            input_size=config.hidden_size,
            hidden_size=config.gru_hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            # torch applies this only between stacked layers, as the original does.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.gru_hidden_size, config.hidden_size)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.initializer_range
        nn.init.normal_(self.item_embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        for name, param in self.gru.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                # Orthogonal recurrent weights keep the state's norm steady over long histories.
                nn.init.orthogonal_(param)
            else:
                nn.init.zeros_(param)
        nn.init.normal_(self.head.weight, std=std)
        nn.init.zeros_(self.head.bias)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """User feature at the last valid click.

        Args:
            history: `[B, L_in]` item ids, 0 = padding anywhere.
        Returns:
            `[B, D]`.
        """
        seq, lengths = compact_history(history, self.config.max_len)  # [B, L], [B]
        return gather_last(self.encode_positions(seq), lengths)

    def encode_positions(self, history: torch.Tensor) -> torch.Tensor:
        """`[B, L, D]` features after every click of right-padded `history`."""
        x = self.emb_dropout(self.item_embedding(history))  # [B, L, D]
        # Right-padded and causal: the output at a valid click never sees the pads.
        out, _ = self.gru(x)  # [B, L, D] -> [B, L, G]
        return self.head(out)  # [B, L, G] -> [B, L, D]

    def score(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        feature = self.encode(history)  # [B, D]
        # [B, C, D] · [B, D] -> [B, C]
        return torch.einsum("bcd,bd->bc", self.item_embedding(items), feature)

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        feature = self.encode(history)  # [B, D]
        return feature @ self.item_embedding.weight.t()  # [B, D] @ [D, N] -> [B, N]
