"""GRU4Rec (Hidasi et al., ICLR 2016), in the next-item form RecBole and the SRM papers use.

Layout: item embedding → dropout → `num_layers`-layer GRU over the last `max_len` valid
clicks → hidden state at the last valid click → linear to D = user feature `F`; the score
of item `i` is `F · E[i]` with the same item embedding table `E`.

A GRU carries its state, so a device need not re-read the history: `init_state` and `step`
fold one click into the `[B, layers, G]` hidden state in O(G² + G·D) (the GRU cell written
out with the `nn.GRU` weights, so it exports to a loop-free ONNX graph:
`seqrec.onnx_export.export_gru4rec_step`). Stepping a history of at most `max_len` clicks gives
the forward's feature; a longer one keeps every click in the state, where the forward reads
the last `max_len`.

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

    def init_state(self, batch_size: int = 1) -> torch.Tensor:
        """`[B, layers, G]` zeros: the GRU's state before any click (as `nn.GRU` starts)."""
        cfg = self.config
        return torch.zeros(batch_size, cfg.num_layers, cfg.gru_hidden_size)

    def step(self, state: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold one click per user into the state (item 0 = no click, state kept).

        Args:
            state: `[B, layers, G]` hidden states.
            items: `[B]` clicked item ids.
        Returns:
            `(state, F)` with `F` the `[B, D]` user feature after the click.
        """
        x = self.item_embedding(items)  # [B, D]
        layers = []
        for layer in range(self.config.num_layers):
            x = self._cell(x, state[:, layer], layer)  # [B, G]
            layers.append(x)
        new = torch.stack(layers, dim=1)  # [B, layers, G]
        new = torch.where((items != 0)[:, None, None], new, state)
        return new, self.head(new[:, -1])

    def _cell(self, x: torch.Tensor, h: torch.Tensor, layer: int) -> torch.Tensor:
        """One GRU cell of `layer` with `nn.GRU`'s weights (gate order r, z, n)."""
        w_ih = getattr(self.gru, f"weight_ih_l{layer}")  # [3G, in]
        w_hh = getattr(self.gru, f"weight_hh_l{layer}")  # [3G, G]
        b_ih = getattr(self.gru, f"bias_ih_l{layer}")
        b_hh = getattr(self.gru, f"bias_hh_l{layer}")
        gi = x @ w_ih.t() + b_ih  # [B, 3G]
        gh = h @ w_hh.t() + b_hh  # [B, 3G]
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
        return (1 - update) * candidate + update * h

    def score_features(self, features: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits `[B, C]` of candidate ids `items [B, C]` for user features `[B, D]`."""
        return torch.einsum("bcd,bd->bc", self.item_embedding(items), features)

    def score(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        feature = self.encode(history)  # [B, D]
        # [B, C, D] · [B, D] -> [B, C]
        return torch.einsum("bcd,bd->bc", self.item_embedding(items), feature)

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        feature = self.encode(history)  # [B, D]
        return feature @ self.item_embedding.weight.t()  # [B, D] @ [D, N] -> [B, N]
