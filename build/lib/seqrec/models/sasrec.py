"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the click history.

Layout: item embedding (scaled by sqrt(D)) + learnable positional embedding → dropout →
`num_layers` pre-LN Transformer blocks → final LayerNorm → the hidden state at the last
valid click is the user feature `F`; the score of item `i` is `F · E[i]` with the same
item embedding table `E`.

Pre-LN (LayerNorm before attention and before the feed-forward, residuals around both,
one LayerNorm at the end) follows the authors' reference code (which normalises the
queries before attention) rather than RecBole's post-LN; it trains stably without a
warm-up, which matters for the short on-device retraining runs.

Positions count from the oldest kept click (RecBole's convention for right-padded
batches): histories are first compacted to their last `max_len` valid clicks, so where the
pads sat in the input never changes the result.

Letters used in shape comments:
    B  batch (users)          L  history length after compaction (<= max_len)
    C  candidate items        D  hidden width
    H  attention heads        d  width per head (D / H)
    N  num_items + 1 (the embedding table, row 0 = padding)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from seqrec.models.base import SequentialRecommender, SRMConfig, compact_history, gather_last


@dataclass
class SASRecConfig(SRMConfig):
    """SASRec hyper-parameters (defaults follow the paper's small-data setting)."""

    num_layers: int = 2  # Transformer blocks; the paper finds 2 enough on sparse data
    num_heads: int = 2  # attention heads; must divide hidden_size
    inner_size: int = 256  # feed-forward width (4·D for the default D = 64)
    attn_dropout: float = 0.1  # dropout on attention probabilities during training
    initializer_range: float = 0.02  # std of the normal init of embeddings and linears

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.num_heads < 1 or self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"num_heads must be >= 1 and divide hidden_size={self.hidden_size}, "
                f"got {self.num_heads}"
            )
        if self.inner_size < 1:
            raise ValueError(f"inner_size must be >= 1, got {self.inner_size}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ValueError(f"attn_dropout must be in [0, 1), got {self.attn_dropout}")
        if self.initializer_range <= 0.0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position `i` sees valid positions `<= i`."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = nn.Dropout(config.attn_dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Args: x `[B, L, D]`; allowed `[B, 1, L, L]` bool (query row, key column)."""
        b, length, dim = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).split(dim, dim=-1)  # [B, L, 3D] -> 3 × [B, L, D]
        # [B, L, D] -> [B, L, H, d] -> [B, H, L, d]
        q, k, v = (t.view(b, length, h, dim // h).transpose(1, 2) for t in (q, k, v))
        att = q @ k.transpose(-2, -1) / math.sqrt(dim // h)  # [B,H,L,d] @ [B,H,d,L] -> [B,H,L,L]
        # A large negative (not -inf) keeps rows with no allowed key (empty history) finite.
        att = att.masked_fill(~allowed, torch.finfo(att.dtype).min)
        att = self.attn_dropout(att.softmax(dim=-1))
        y = att @ v  # [B, H, L, L] @ [B, H, L, d] -> [B, H, L, d]
        y = y.transpose(1, 2).reshape(b, length, dim)  # [B, H, L, d] -> [B, L, D]
        return self.out(y)


class TransformerBlock(nn.Module):
    """Pre-LN block: `x + Attn(LN(x))`, then `x + FFN(LN(x))`."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.hidden_size)
        self.attn = CausalSelfAttention(config)
        self.ln_ffn = nn.LayerNorm(config.hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden_size, config.inner_size),
            nn.GELU(),
            nn.Linear(config.inner_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_attn(x), allowed))
        return x + self.dropout(self.ffn(self.ln_ffn(x)))


class SASRec(SequentialRecommender):
    """Self-attentive sequential recommendation; see the module docstring."""

    name = "sasrec"
    config_class = SASRecConfig

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.num_items + 1, config.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden_size)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

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
        """`[B, L, D]` features after every click of right-padded `history` (`L <= max_len`)."""
        length = history.size(1)
        positions = torch.arange(length, device=history.device)  # [L]
        # sqrt(D) scaling as in the paper, so the positional signal does not dominate.
        x = self.item_embedding(history) * math.sqrt(self.config.hidden_size)  # [B, L, D]
        x = self.emb_dropout(x + self.position_embedding(positions))
        valid = history != 0  # [B, L]
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()
        allowed = (causal & valid.unsqueeze(1)).unsqueeze(1)  # [L, L] & [B, 1, L] -> [B, 1, L, L]
        for block in self.blocks:
            # Zeroing pad positions keeps them from carrying anything between blocks.
            x = block(x, allowed) * valid.unsqueeze(-1)
        return self.final_norm(x)

    def score(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        feature = self.encode(history)  # [B, D]
        # [B, C, D] · [B, D] -> [B, C]
        return torch.einsum("bcd,bd->bc", self.item_embedding(items), feature)

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        feature = self.encode(history)  # [B, D]
        return feature @ self.item_embedding.weight.t()  # [B, D] @ [D, N] -> [B, N]
