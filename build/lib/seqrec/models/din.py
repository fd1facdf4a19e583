"""DIN, the Deep Interest Network (Zhou et al., KDD 2018), as a sequential SRM.

For each candidate (target) item `t`, an attention MLP weighs every history embedding `h`
by its relevance to `t`, from the features `[h, t, h − t, h ⊙ t]`. As in the paper the
weights are **not** softmax-normalised (their sum keeps the strength of the interest); pads
get weight 0. The weighted sum is the target-specific interest `u`, and an MLP on
`[u, t, u ⊙ t]` gives the logit.

Deviations from the paper, for a model that must also run on a phone: PReLU instead of
Dice (Dice's batch statistics make a user's score depend on the rest of the batch), and
no user-profile or context features (the data sets carry only item ids).

Because every score depends on the target, there is no single user vector: `score_all`
runs the attention for every item, in chunks of items that bound the activation memory.

Letters used in shape comments:
    B  batch (users)          L  history length after compaction (<= max_len)
    C  candidate items        D  hidden width (embedding)
    A  first attention-MLP width    N  num_items + 1 (row 0 = padding)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqrec.models.base import SequentialRecommender, SRMConfig, compact_history


@dataclass
class DINConfig(SRMConfig):
    """DIN hyper-parameters."""

    attention_hidden_sizes: tuple[int, ...] = (64, 32)  # attention MLP widths (paper: 80, 40)
    mlp_hidden_sizes: tuple[int, ...] = (128, 64)  # prediction MLP widths (paper: 200, 80)
    initializer_range: float = 0.02  # std of the normal init of the item embedding
    # score_all works on chunks of items so that B·C·L·max(D, A) floats stay below this.
    score_all_chunk_elements: int = 1 << 24

    def __post_init__(self) -> None:
        super().__post_init__()
        # JSON round trips turn tuples into lists; keep the declared type.
        self.attention_hidden_sizes = tuple(self.attention_hidden_sizes)
        self.mlp_hidden_sizes = tuple(self.mlp_hidden_sizes)
        for field_name in ("attention_hidden_sizes", "mlp_hidden_sizes"):
            sizes = getattr(self, field_name)
            if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
                raise ValueError(
                    f"{field_name} must be a non-empty tuple of ints >= 1, got {sizes}"
                )
        if self.initializer_range <= 0.0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range}")
        if self.score_all_chunk_elements < 1:
            raise ValueError(
                f"score_all_chunk_elements must be >= 1, got {self.score_all_chunk_elements}"
            )


def mlp(in_size: int, hidden_sizes: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Linear → PReLU → Dropout per hidden size, then a linear to one output."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_size, size), nn.PReLU(), nn.Dropout(dropout)]
        in_size = size
    layers.append(nn.Linear(in_size, 1))
    return nn.Sequential(*layers)


class DIN(SequentialRecommender):
    """Target-aware attention over the history; see the module docstring."""

    name = "din"
    config_class = DINConfig

    def __init__(self, config: DINConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.item_embedding = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.emb_dropout = nn.Dropout(config.dropout)
        # Attention unit: the first layer reads [h, t, h − t, h ⊙ t] (4D inputs).
        # Attention dropout is off: the weights are unnormalised interest strengths.
        attention = mlp(4 * d, config.attention_hidden_sizes, dropout=0.0)
        self.attention_first = attention[0]
        self.attention_rest = attention[1:]
        self.predictor = mlp(3 * d, config.mlp_hidden_sizes, config.dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.item_embedding.weight, std=self.config.initializer_range)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def _encode_history(self, history: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """History embeddings, their pad mask and their part of the first attention layer."""
        seq, _ = compact_history(history, self.config.max_len)  # [B, L]
        return self._history_parts(seq)

    def _history_parts(self, seq: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.emb_dropout(self.item_embedding(seq))  # [B, L, D]
        w_h, _, w_diff, _ = self.attention_first.weight.chunk(4, dim=1)  # 4 × [A, D]
        # The first layer is linear in its concatenated input, so the terms that depend on
        # only h or only t are computed once instead of once per (history, target) pair.
        h_part = h @ (w_h + w_diff).t()  # [B, L, D] @ [D, A] -> [B, L, A]
        return h, (seq != 0), h_part

    def _score_targets(
        self, h: torch.Tensor, allowed: torch.Tensor, h_part: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Logits of target embeddings `t` `[B, C, D]` given the encoded history; `allowed`
        (`[B, 1, L]` or `[B, C, L]`) says which history clicks each target may attend to."""
        _, w_t, w_diff, w_prod = self.attention_first.weight.chunk(4, dim=1)  # 4 × [A, D]
        t_part = t @ (w_t - w_diff).t()  # [B, C, D] @ [D, A] -> [B, C, A]
        prod = h.unsqueeze(1) * t.unsqueeze(2)  # [B, 1, L, D] * [B, C, 1, D] -> [B, C, L, D]
        pre = prod @ w_prod.t()  # [B, C, L, D] @ [D, A] -> [B, C, L, A]
        pre = pre + h_part.unsqueeze(1) + t_part.unsqueeze(2) + self.attention_first.bias
        weights = self.attention_rest(pre).squeeze(-1)  # [B, C, L, A] -> [B, C, L]
        weights = weights * allowed  # pads (and later clicks) weigh 0
        interest = weights @ h  # [B, C, L] @ [B, L, D] -> [B, C, D]
        features = torch.cat([interest, t, interest * t], dim=-1)  # [B, C, 3D]
        return self.predictor(features).squeeze(-1)  # [B, C, 3D] -> [B, C]

    def score(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h, valid, h_part = self._encode_history(history)
        t = self.emb_dropout(self.item_embedding(items))  # [B, C, D]
        return self._score_targets(h, valid.unsqueeze(1), h_part, t)

    def score_positions(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Target attention under a causal mask: the candidates `items[:, t]` attend to clicks
        `0..t` of the right-padded window `history` `[B, L]`; `items` `[B, L, C]` -> `[B, L, C]`.

        The attention unit runs once per (position, candidate, earlier click): only the
        `P = L(L+1)/2` pairs `j <= t` are computed, `C·P` units per window. That is the same
        work as one example per prefix, so unlike the other SRMs DIN gains little from
        windows; it suits a few sampled candidates, not the whole catalogue.
        """
        h, valid, h_part = self._history_parts(history)  # [B, L, D], [B, L], [B, L, A]
        b, length, c = items.shape
        t = self.emb_dropout(self.item_embedding(items))  # [B, L, C, D]
        _, w_t, w_diff, w_prod = self.attention_first.weight.chunk(4, dim=1)  # 4 × [A, D]
        rows, cols = torch.tril_indices(length, length, device=history.device)  # [P] t, j
        t_rows = t[:, rows].transpose(1, 2)  # [B, P, C, D] -> [B, C, P, D]
        h_cols = h[:, cols].unsqueeze(1)  # [B, 1, P, D]
        pre = (t_rows * h_cols) @ w_prod.t()  # [B, C, P, D] @ [D, A] -> [B, C, P, A]
        t_part = t @ (w_t - w_diff).t()  # [B, L, C, D] @ [D, A] -> [B, L, C, A]
        pre = pre + t_part[:, rows].transpose(1, 2) + h_part[:, cols].unsqueeze(1)
        pre = pre + self.attention_first.bias
        pair_weights = self.attention_rest(pre).squeeze(-1)  # [B, C, P]
        pair_weights = pair_weights * valid[:, cols].unsqueeze(1)  # pads weigh 0
        weights = pair_weights.new_zeros(b, c, length, length)
        weights[:, :, rows, cols] = pair_weights  # [B, C, L(t), L(j)], zero above the diagonal
        interest = (weights @ h.unsqueeze(1)).transpose(1, 2)  # [B, C, L, D] -> [B, L, C, D]
        features = torch.cat([interest, t, interest * t], dim=-1)  # [B, L, C, 3D]
        return self.predictor(features).squeeze(-1)  # [B, L, C]

    def score_positions_all(self, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "DIN scores each (position, item) pair with its own attention pass; a full softmax "
            "over the catalogue after every position is out of reach: use loss bce or "
            "sampled-softmax"
        )

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        h, valid, h_part = self._encode_history(history)
        b, length, d = h.shape
        n = self.config.num_items + 1
        width = max(d, self.attention_first.out_features)
        chunk = max(1, self.config.score_all_chunk_elements // (b * length * width))
        table = self.emb_dropout(self.item_embedding.weight)  # [N, D]
        scores = [
            # [c, D] -> [B, c, D] (a view, no copy)
            self._score_targets(
                h, valid.unsqueeze(1), h_part, table[start : start + chunk].expand(b, -1, d)
            )
            for start in range(0, n, chunk)
        ]
        return torch.cat(scores, dim=1)  # [B, N]
