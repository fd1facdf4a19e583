"""GRU4Rec (Hidasi et al., ICLR 2016), in the next-item form RecBole and the SRM papers use.

Layout: item embedding → dropout → `num_layers`-layer GRU over the last `max_len` valid
clicks → hidden state at the last valid click → linear to D = user feature `F`; the score
of item `i` is `F · E[i]` with the same item embedding table `E`.

A GRU carries its state, so a device need not re-read the history: `init_state` and `step`
fold one click into the `[B, layers, G]` hidden state in O(G² + G·D) (the GRU cell written
out with the `nn.GRU` weights, so it exports to a loop-free ONNX graph:
`seqrec.onnx_export.export_step`, the same device contract as TTT4Rec's, surprise included).
Stepping a history of at most `max_len` clicks gives the forward's feature; a longer one keeps
every click in the state, where the forward reads the last `max_len`.

Letters used in shape comments:
    B  batch (users)          L  history length after compaction (<= max_len)
    C  candidate items        D  hidden width (embedding)
    G  GRU hidden width       N  num_items + 1 (the embedding table, row 0 = padding)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from seqrec.models.base import SequentialRecommender, SRMConfig, compact_history, gather_last
from seqrec.models.surprise import DRIFT_WINDOW, click_surprise, push_recent, stack_surprise
from shared.device_format import decode_named_state, encode_named_state


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


@dataclass
class GRU4RecState:
    """Carried per-user state of GRU4Rec.

    Attributes:
        hidden: `[B, layers, G]` the GRU's hidden state after the last click.
        feature: `[B, D]` the user feature `F_s` after the last click (zeros before any).
        recent: `[B, R, D]` the item features of the last R clicks, oldest first (drift).
    """

    hidden: torch.Tensor
    feature: torch.Tensor
    recent: torch.Tensor

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Tensor names in the fixed order of `tensors()` and the ONNX step graph."""
        return tuple(f.name for f in fields(cls))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.hidden, self.feature, self.recent)

    @classmethod
    def cat(cls, states: Sequence[GRU4RecState]) -> GRU4RecState:
        """Concatenate states of several user groups along the batch dimension."""
        if not states:
            raise ValueError("cat needs at least one state")
        return cls(*(torch.cat(parts) for parts in zip(*(s.tensors() for s in states))))

    def to_bytes(self) -> bytes:
        """Serialise (`shared.device_format`, format STN1): what a device stores and reads."""
        arrays = {n: t.detach().cpu().numpy() for n, t in zip(self.names(), self.tensors())}
        return encode_named_state(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> GRU4RecState:
        """Inverse of `to_bytes`.

        Raises:
            ValueError: not a serialised GRU4Rec state.
        """
        arrays = decode_named_state(data)
        if tuple(arrays) != cls.names():
            raise ValueError(f"not a GRU4Rec state: tensors {tuple(arrays)}")
        return cls(**{name: torch.from_numpy(a) for name, a in arrays.items()})


class GRU4Rec(SequentialRecommender):
    """Recurrent session-based recommendation; see the module docstring."""

    name = "gru4rec"
    config_class = GRU4RecConfig
    stateful = True

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

    def init_state(self, batch_size: int = 1) -> GRU4RecState:
        """The state before any click: zero hidden state (as `nn.GRU` starts), zero feature."""
        cfg = self.config
        weight = self.item_embedding.weight
        return GRU4RecState(
            hidden=weight.new_zeros(batch_size, cfg.num_layers, cfg.gru_hidden_size),
            feature=weight.new_zeros(batch_size, cfg.hidden_size),
            recent=weight.new_zeros(batch_size, DRIFT_WINDOW, cfg.hidden_size),
        )

    def step(self, state: GRU4RecState, items: torch.Tensor) -> tuple[GRU4RecState, torch.Tensor]:
        """Fold one click per user into the state (item 0 = no click, state kept).

        Args:
            state: the users' carried state.
            items: `[B]` clicked item ids.
        Returns:
            `(state, F)` with `F` the `[B, D]` user feature after the click.
        """
        mask = items != 0  # [B]
        x = self.item_embedding(items)  # [B, D]
        layers = []
        for layer in range(self.config.num_layers):
            x = self._cell(x, state.hidden[:, layer], layer)  # [B, G]
            layers.append(x)
        hidden = torch.where(mask[:, None, None], torch.stack(layers, dim=1), state.hidden)
        feature = torch.where(mask[:, None], self.head(hidden[:, -1]), state.feature)  # [B, D]
        recent = push_recent(state.recent, self.item_features(items), mask)
        return GRU4RecState(hidden, feature, recent), feature

    def step_with_surprise(
        self,
        state: GRU4RecState,
        items: torch.Tensor,
        item_table: torch.Tensor | None = None,
        catalogue: bool = True,
    ) -> tuple[GRU4RecState, torch.Tensor, torch.Tensor]:
        """`step`, plus how unexpected each click was before it was folded in: `[B, 5]` in
        `SURPRISE_COLUMNS` order (a GRU has no inner loss: that column is 0). `item_table` and
        `catalogue` as for TTT4Rec."""
        table = self.all_item_features() if item_table is None else item_table  # [I, D]
        columns = click_surprise(state.feature, state.recent, table, items, catalogue)
        new_state, feature = self.step(state, items)
        return new_state, feature, stack_surprise(*columns, torch.zeros_like(columns[0]))

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
