"""TTT4Rec (Zhan, Lv, Zhang, Li): TTT-Linear blocks as the on-device sequential recommender.

Layout: item embedding (row 0 = padding) → `num_layers` TTT-Linear blocks → RMSNorm → the
hidden state at the last valid click is the user feature `F_s`. A candidate goes through
the same embedding and a 2-layer MLP to `F_t`; the logit is `F_s · F_t`.

The TTT layers' fast weights are the user state: `step` folds one click into it in
O(H·F²) whatever the history length, and stepping a history click by click gives the same
`F_s` as `encode` on it. Like every SRM, `encode` reads the last `max_len` valid clicks;
`step` never forgets on a schedule (the state is the compressed history), so the two agree
while the history has at most `max_len` clicks, which is how the model is trained.

Letters used in shape comments:
    B  batch (users)          L  history length             C  candidate items
    D  hidden width           N  TTT layers                 H  heads per layer
    F  head width (D / H)     I  num_items + 1 (row 0 = padding)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from seqrec.models.base import SequentialRecommender, SRMConfig, compact_history, gather_last
from seqrec.models.surprise import DRIFT_WINDOW, click_surprise, push_recent, stack_surprise
from seqrec.models.ttt_linear import RMSNorm, TTTBlock, TTTLinearConfig, TTTState
from shared.device_format import STATE_NAMES, decode_state, encode_state

TARGET_TOWERS = ("mlp", "embedding")


@dataclass
class TTT4RecConfig(SRMConfig):
    """TTT4Rec hyper-parameters; the TTT fields are passed to every `TTTLinearConfig`."""

    num_layers: int = 1  # TTT-Linear blocks; one suffices for short histories (paper)
    num_heads: int = 4  # heads per TTT layer; 4 keeps the state ~9 KB per user at D = 64
    mini_batch_size: int = 16  # tokens per inner step (reference default; paper: 1 or 10 best)
    base_lr: float = 1.0  # inner learning-rate scale, as published for TTT-Linear
    initializer_range: float = 0.02  # std of linear and embedding init (a tuned knob in paper)
    inner_init_std: float = 0.02  # std of the initial fast weight W₀ (published 0.02)
    use_gate: bool = False  # gelu gate before the TTT output projection (Mamba variant)
    use_rope: bool = True  # RoPE on Q, K inside the mini-batch, as published
    intermediate_size: int = 128  # SwiGLU hidden width (2·D by default)
    drift_window: int = DRIFT_WINDOW  # R: last clicks the drift of a new click is taken from
    # F_t of a candidate: "mlp" = the shared embedding then a 2-layer MLP (the abstract);
    # "embedding" = the shared embedding itself, as SASRec and GRU4Rec score
    target_tower: str = "mlp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_tower not in TARGET_TOWERS:
            raise ValueError(
                f"target_tower must be one of {TARGET_TOWERS}, got {self.target_tower!r}"
            )
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.drift_window < 1:
            raise ValueError(f"drift_window must be >= 1, got {self.drift_window}")
        self.ttt_config()  # validates the TTT fields, raising ValueError on a bad one

    def ttt_config(self) -> TTTLinearConfig:
        """The `TTTLinearConfig` of each block."""
        return TTTLinearConfig(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            mini_batch_size=self.mini_batch_size,
            base_lr=self.base_lr,
            initializer_range=self.initializer_range,
            inner_init_std=self.inner_init_std,
            use_gate=self.use_gate,
            use_rope=self.use_rope,
            intermediate_size=self.intermediate_size,
            dropout=self.dropout,
        )


@dataclass
class TTT4RecState:
    """Carried per-user state of TTT4Rec: the fast weights of all layers plus the last `F_s`.

    Attributes:
        weight: `[B, N, H, F, F]` W of each layer at the last mini-batch boundary.
        bias: `[B, N, H, F]` b of each layer at the last mini-batch boundary.
        grad_weight: `[B, N, H, F, F]` running Σ lr·XKᵀ·G of the partly filled mini-batch.
        grad_bias: `[B, N, H, F]` running Σ lr·G of the partly filled mini-batch.
        pos: `[B]` int64 clicks already in the current mini-batch (shared by all layers).
        feature: `[B, D]` `F_s` after the last valid click (zeros before any click).
        recent: `[B, R, D]` target features `F_t` of the last R clicks, oldest first; rows
            before the first click are zero (the drift of a click is taken from their mean).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    grad_weight: torch.Tensor
    grad_bias: torch.Tensor
    pos: torch.Tensor
    feature: torch.Tensor
    recent: torch.Tensor

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Tensor names in the fixed order used by `tensors()` and the ONNX step graph."""
        return _STATE_NAMES

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors in `names()` order."""
        return (
            self.weight,
            self.bias,
            self.grad_weight,
            self.grad_bias,
            self.pos,
            self.feature,
            self.recent,
        )

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    def layer(self, index: int) -> TTTState:
        """Layer `index`'s fast weights as a `TTTState` (views, no copy)."""
        return TTTState(
            self.weight[:, index],
            self.bias[:, index],
            self.grad_weight[:, index],
            self.grad_bias[:, index],
            self.pos,
        )

    @classmethod
    def from_layers(
        cls, layers: Sequence[TTTState], feature: torch.Tensor, recent: torch.Tensor
    ) -> TTT4RecState:
        """Stack per-layer states (which share `pos`), the feature and the recent `F_t`s."""
        return cls(
            weight=torch.stack([s.weight for s in layers], dim=1),
            bias=torch.stack([s.bias for s in layers], dim=1),
            grad_weight=torch.stack([s.grad_weight for s in layers], dim=1),
            grad_bias=torch.stack([s.grad_bias for s in layers], dim=1),
            pos=layers[0].pos,
            feature=feature,
            recent=recent,
        )

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> TTT4RecState:
        """The users at `index` (a slice, a list of ints, or an int64 / bool tensor)."""
        if not isinstance(index, slice | torch.Tensor):
            index = torch.as_tensor(index, dtype=torch.long)
        return TTT4RecState(*(t[index] for t in self.tensors()))

    @classmethod
    def cat(cls, states: Sequence[TTT4RecState]) -> TTT4RecState:
        """Concatenate states of several user groups along the batch dimension."""
        if not states:
            raise ValueError("cat needs at least one state")
        return cls(*(torch.cat(parts) for parts in zip(*(s.tensors() for s in states))))

    def to_bytes(self) -> bytes:
        """Serialise (`shared.device_format`, format TTS2): what a device stores and reads."""
        return encode_state(
            {name: t.detach().cpu().numpy() for name, t in zip(self.names(), self.tensors())}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TTT4RecState:
        """Inverse of `to_bytes`.

        Raises:
            ValueError: if `data` is not a serialised state or has the wrong length.
        """
        return cls(**{name: torch.from_numpy(a) for name, a in decode_state(data).items()})

    @property
    def width(self) -> int:
        return self.feature.shape[-1]


_STATE_NAMES = tuple(f.name for f in fields(TTT4RecState))
assert _STATE_NAMES == STATE_NAMES, "the state's fields are the device format's tensors"


class TTT4Rec(SequentialRecommender):
    """TTT4Rec: stateful sequential recommender with TTT-Linear blocks."""

    name = "ttt4rec"
    config_class = TTT4RecConfig
    stateful = True

    def __init__(self, config: TTT4RecConfig) -> None:
        super().__init__(config)
        width = config.hidden_size
        self.item_embedding = nn.Embedding(config.num_items + 1, width, padding_idx=0)
        self.embed_dropout = nn.Dropout(config.dropout)
        block_config = config.ttt_config()
        self.blocks = nn.ModuleList(TTTBlock(block_config) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(width, block_config.norm_eps)
        if config.target_tower == "mlp":
            self.target_mlp = nn.Sequential(
                nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)
            )
        else:
            self.target_mlp = nn.Identity()
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) linears and embeddings, zero biases and pad row."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            with torch.no_grad():
                module.weight[0].zero_()

    def encode_with_state(self, history: torch.Tensor) -> tuple[TTT4RecState, torch.Tensor]:
        """One full forward over `history`: the carried state it leaves and `F_s`.

        Args:
            history: `[B, L]` item ids, 0 = padding anywhere; the last `max_len` valid
                clicks are read.
        Returns:
            `(state, F_s)`: the state equal to stepping those clicks from `init_state`,
            and `[B, D]` features (zeros for an empty history).
        """
        # Valid clicks first, so mini-batch boundaries count from each user's first click.
        history, lengths = compact_history(history, self.config.max_len)  # [B, L], [B]
        h, layer_states = self._forward(history)  # [B, L, D]
        features = gather_last(h, lengths) * (lengths > 0)[:, None].to(h.dtype)  # [B, D]
        state = TTT4RecState.from_layers(layer_states, features, self._recent_of(history, lengths))
        return state, features

    def _recent_of(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`[B, R, D]` F_t of the last R valid clicks of right-padded `history`, oldest first,
        zero rows where a user has fewer clicks (what stepping them leaves)."""
        window = self.config.drift_window
        offsets = torch.arange(window, device=history.device) - window  # [R]: −R … −1
        index = lengths[:, None] + offsets  # [B, R]
        present = index >= 0
        items = history.gather(1, index.clamp(min=0, max=history.size(1) - 1)) * present
        features = self.item_features(items)  # [B, R, D]
        return features * present[..., None].to(features.dtype)

    def _forward(self, history: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Hidden states `[B, L, D]` after every click of right-padded `history`, and the
        per-layer states left after its last valid click."""
        mask = history != 0  # [B, L]
        h = self.embed_dropout(self.item_embedding(history))  # [B, L, D]
        layer_states = []
        for block in self.blocks:
            h, layer_state = block(h, mask)
            layer_states.append(layer_state)
        return self.final_norm(h), layer_states

    def encode_positions(self, history: torch.Tensor) -> torch.Tensor:
        """`[B, L, D]` features after every click; mini-batch TTT is causal over a window
        (the dual form reads only earlier tokens of a mini-batch), so row `t` sees clicks `<= t`."""
        return self._forward(history)[0]

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """`F_s [B, D]`: the final hidden state at each user's last valid click."""
        return self.encode_with_state(history)[1]

    def item_features(self, items: torch.Tensor) -> torch.Tensor:
        """`F_t [..., D]` of item ids `[...]`: the shared embedding, then the 2-layer MLP unless
        `target_tower` is "embedding"."""
        return self.target_mlp(self.item_embedding(items))

    def score_features(self, features: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits `F_s · F_t`.

        Args:
            features: `[B, D]` user features `F_s`.
            items: `[B, C]` candidate ids.
        Returns:
            `[B, C]` logits.
        """
        targets = self.item_features(items)  # [B, C, D]
        return (targets @ features.unsqueeze(-1)).squeeze(-1)  # [B, C, D] @ [B, D, 1] -> [B, C]

    def score(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.encode(history), items)

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        """Logits of every item `[B, I]`: encode once, one matmul against all item features."""
        all_items = self.all_item_features()  # [I, D]
        return self.encode(history) @ all_items.t()  # [B, D] @ [D, I] -> [B, I]

    def init_state(self, batch_size: int = 1) -> TTT4RecState:
        """Fresh state for `batch_size` users with no clicks yet."""
        layers = [block.ttt.init_state(batch_size) for block in self.blocks]
        weight = self.item_embedding.weight
        width = self.config.hidden_size
        feature = weight.new_zeros(batch_size, width)
        recent = weight.new_zeros(batch_size, self.config.drift_window, width)
        return TTT4RecState.from_layers(layers, feature, recent)

    def step(self, state: TTT4RecState, items: torch.Tensor) -> tuple[TTT4RecState, torch.Tensor]:
        """Fold one click per user into the state; O(N·H·F²), independent of history length.

        Args:
            state: the users' carried state.
            items: `[B]` clicked item ids; 0 leaves that user's state (and `F_s`) unchanged.
        Returns:
            `(state, F_s)`: the new state and `[B, D]` features (equal to `state.feature`).
        """
        new_state, features, _ = self._step(state, items, with_loss=False)
        return new_state, features

    def step_with_surprise(
        self,
        state: TTT4RecState,
        items: torch.Tensor,
        item_table: torch.Tensor | None = None,
        catalogue: bool = True,
    ) -> tuple[TTT4RecState, torch.Tensor, torch.Tensor]:
        """`step`, plus how unexpected each click was before it was folded in.

        Args:
            state: the users' carried state.
            items: `[B]` clicked ids (>= 1; a 0 gives a meaningless surprise row).
            item_table: `[I, D]` `F_t` of every item (`all_item_features()`), precomputed
                by a caller that steps often; computed here if None.
            catalogue: also score the whole catalogue for the click's surprisal (`nll`) and
                rank share; without it those two columns are NaN and the step skips the
                `[B, D] × [D, I]` product (what a policy that reads neither needs).
        Returns:
            `(state, F_s, surprise)` with `surprise [B, 5]` in
            `seqrec.models.surprise.SURPRISE_COLUMNS` order.
        """
        table = self.all_item_features() if item_table is None else item_table  # [I, D]
        columns = click_surprise(state.feature, state.recent, table, items, catalogue)
        new_state, features, inner_loss = self._step(state, items, with_loss=True)
        return new_state, features, stack_surprise(*columns, inner_loss)

    def _step(
        self, state: TTT4RecState, items: torch.Tensor, with_loss: bool
    ) -> tuple[TTT4RecState, torch.Tensor, torch.Tensor | None]:
        mask = items != 0  # [B]
        h = self.embed_dropout(self.item_embedding(items))  # [B, D]
        layer_states = []
        loss = None
        for index, block in enumerate(self.blocks):
            if with_loss:
                h, layer_state, layer_loss = block.step_with_loss(h, state.layer(index), mask)
                loss = layer_loss if loss is None else loss + layer_loss
            else:
                h, layer_state = block.step(h, state.layer(index), mask)
            layer_states.append(layer_state)
        features = torch.where(mask[:, None], self.final_norm(h), state.feature)  # [B, D]
        recent = push_recent(state.recent, self.item_features(items), mask)
        return TTT4RecState.from_layers(layer_states, features, recent), features, loss
