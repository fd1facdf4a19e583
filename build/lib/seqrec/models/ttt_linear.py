"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time)"), written for the device.

The hidden state of the layer is the weight of a per-head linear inner model
`f(x) = LN_h(x·W + b)`. Every token takes a gradient step on the self-supervised loss
`½‖LN_h(XK·W + b) − (XV − XK)‖²`; the output reads the updated weights with the query:
`XQ + LN_h(XQ·W̄ + b̄)`. Mini-batch TTT takes all gradients of a mini-batch at the weights
`(W₀, b₀)` of its start and is computed in the dual form; the one-token `step` keeps the
learning-rate-weighted gradient sums of the partly filled mini-batch in `TTTState`, so
streaming a sequence click by click gives exactly the full-sequence outputs.

Pad tokens (mask False) never update the state: their inner learning rate is zeroed in the
full forward, and `step` keeps the old state for them. The full forward expects valid
tokens first (right padding); `TTT4Rec` normalises histories to that order.

One module on purpose: the full forward (dual form), the online-GD path and the one-token
`step` implement the same equations and are tested against each other to 1e-5; keeping them
side by side is what keeps them equal.

Letters used in shape comments:
    B  batch (users)              L  sequence length (padded to a multiple of M inside)
    D  model width                H  heads
    F  head width (D / H)         M  mini-batch size (tokens per inner step)
    K  mini-batches (L / M)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F_
from torch import nn


@dataclass
class TTTLinearConfig:
    """Hyper-parameters of one TTT-Linear block (TTT layer + SwiGLU MLP)."""

    hidden_size: int = 64  # model width D, split into num_heads heads of width D / num_heads
    num_heads: int = 4  # heads with their own fast weights; 4 keeps W at 4 KB for D = 64
    mini_batch_size: int = 16  # tokens per inner step (published default); 1 = online GD
    base_lr: float = 1.0  # scale of the inner learning rate; 1.0 as published for TTT-Linear
    initializer_range: float = 0.02  # std of the outer linear layers' normal init
    inner_init_std: float = 0.02  # std of the initial fast weight W₀ (published 0.02)
    use_gate: bool = False  # gelu(θ_g X) ⊙ y before the output projection (Mamba variant)
    use_rope: bool = True  # RoPE on Q, K with the position inside the mini-batch, as published
    rope_theta: float = 10000.0  # RoPE base frequency (published default)
    intermediate_size: int = 128  # SwiGLU hidden width (2·D: the device model stays small)
    norm_eps: float = 1e-6  # epsilon of every RMSNorm/LayerNorm, as in the reference code
    dropout: float = 0.0  # dropout on the residual branches during training

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_heads < 1 or self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"num_heads must be >= 1 and divide hidden_size={self.hidden_size}, "
                f"got {self.num_heads}"
            )
        if self.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {self.mini_batch_size}")
        if self.base_lr <= 0.0:
            raise ValueError(f"base_lr must be > 0, got {self.base_lr}")
        if self.initializer_range <= 0.0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range}")
        if self.inner_init_std < 0.0:
            raise ValueError(f"inner_init_std must be >= 0, got {self.inner_init_std}")
        if self.use_rope and self.head_dim % 2 != 0:
            raise ValueError(f"use_rope needs an even head width, got {self.head_dim}")
        if self.rope_theta <= 0.0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be >= 1, got {self.intermediate_size}")
        if self.norm_eps <= 0.0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        """Width F of one head."""
        return self.hidden_size // self.num_heads


@dataclass
class TTTState:
    """Fast weights of one TTT-Linear layer for a batch of users.

    Attributes:
        weight: `[B, H, F, F]` W at the last mini-batch boundary.
        bias: `[B, H, F]` b at the last mini-batch boundary.
        grad_weight: `[B, H, F, F]` Σ lr_j·XK_jᵀ·G_j over the partly filled mini-batch.
        grad_bias: `[B, H, F]` Σ lr_j·G_j over the partly filled mini-batch.
        pos: `[B]` int64, tokens already in the current mini-batch (0 … M − 1).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    grad_weight: torch.Tensor
    grad_bias: torch.Tensor
    pos: torch.Tensor


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable scale (written out so it exports to opset 17+)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written as x / sqrt(mean(x²) + ε) so onnxruntime fuses it into a single
        # SimplifiedLayerNormalization kernel in an exported graph.
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    """Gated feed-forward `down(silu(gate(x)) ⊙ up(x))`, bias-free as in the reference."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F_.silu(self.gate(x)) * self.up(x))


def head_layer_norm(
    z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """LayerNorm over the head width with per-head affine parameters.

    Args:
        z: `[B, H, M, F]` inner-model outputs.
        weight: `[H, F]` per-head scale.
        bias: `[H, F]` per-head shift.
        eps: variance epsilon.
    Returns:
        `[B, H, M, F]` normalised values.
    """
    # F.layer_norm exports as one LayerNormalization node; the affine part is per head.
    z_hat = F_.layer_norm(z, z.shape[-1:], eps=eps)
    return z_hat * weight.unsqueeze(1) + bias.unsqueeze(1)  # [H, 1, F] broadcast over B, M


def inner_loss(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Self-supervised inner loss `Σ_tokens ½‖LN_h(z) − target‖²` (the reference for tests)."""
    return 0.5 * (head_layer_norm(z, weight, bias, eps) - target).pow(2).sum()


def inner_loss_grad(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Closed-form `∂ inner_loss / ∂z` per token (fused LayerNorm + L2 backward).

    With `ẑ = (z − μ)/σ`, `y = γ ⊙ ẑ + β` and `g = γ ⊙ (y − target)`, the gradient is
    `(F·g − Σg − ẑ·Σ(g ⊙ ẑ)) / (F·σ)`; no autograd graph is built, so it is cheap and exports.

    Args:
        z: `[B, H, M, F]` inner-model outputs `XK·W + b`.
        target: `[B, H, M, F]` reconstruction target `XV − XK`.
        weight: `[H, F]` LayerNorm scale γ.
        bias: `[H, F]` LayerNorm shift β.
        eps: variance epsilon.
    Returns:
        `[B, H, M, F]` gradient G.
    """
    width = z.shape[-1]
    # native_layer_norm also returns 1/σ; it exports as one LayerNormalization node.
    z_hat, _, inv_std = torch.native_layer_norm(z, [width], None, None, eps)
    y = z_hat * weight.unsqueeze(1) + bias.unsqueeze(1)
    g = (y - target) * weight.unsqueeze(1)  # ∂loss/∂ẑ
    g_sum = g.sum(-1, keepdim=True)
    g_dot = (g * z_hat).sum(-1, keepdim=True)
    return (width * g - g_sum - z_hat * g_dot) * inv_std / width


def rope_tables(mini_batch_size: int, head_dim: int, theta: float) -> torch.Tensor:
    """`[2, M, F]` cos and sin of rotary angles for positions 0 … M − 1 inside a mini-batch."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(mini_batch_size, dtype=torch.float64)[:, None] * inv_freq  # [M, F/2]
    angles = torch.cat([angles, angles], dim=-1)  # [M, F]
    return torch.stack([angles.cos(), angles.sin()]).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs `(x_i, x_{i+F/2})` of `x [..., F]` by the angles in `cos`, `sin`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # [..., F]
    return x * cos + rotated * sin


def dual_form_minibatch(
    weight: torch.Tensor,
    bias: torch.Tensor,
    xq: torch.Tensor,
    xk: torch.Tensor,
    xv: torch.Tensor,
    lr: torch.Tensor,
    tau: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One mini-batch of TTT in the dual form; every gradient is taken at `(weight, bias)`.

    Token i reads `W̄_i = W − τ_i Σ_{j≤i} lr_j XK_jᵀ G_j` (and `b̄_i` alike) without forming
    it: `η_ij = τ_i·lr_j` (lower-triangular) turns the sum into two `[M, M]` matmuls.

    Args:
        weight: `[B, H, F, F]` W₀.
        bias: `[B, H, 1, F]` b₀.
        xq, xk, xv: `[B, H, M, F]` queries, keys, values.
        lr: `[B, H, M]` per-token inner learning rates, already zero on pad tokens.
        tau: `[M]` position factors τ_i.
        ln_weight, ln_bias: `[H, F]` inner LayerNorm parameters.
        eps: LayerNorm epsilon.
    Returns:
        `(z_bar, grad_weight, grad_bias)`: `[B, H, M, F]` pre-LayerNorm outputs, and the
        mini-batch's `[B, H, F, F]` Σ lr_j XK_jᵀ G_j and `[B, H, 1, F]` Σ lr_j G_j.
    """
    z = xk @ weight + bias  # [B, H, M, F] @ [B, H, F, F] -> [B, H, M, F]
    grad = inner_loss_grad(z, xv - xk, ln_weight, ln_bias, eps)  # [B, H, M, F]
    eta = torch.tril(tau[:, None] * lr.unsqueeze(-2))  # [M, 1] * [B, H, 1, M] -> [B, H, M, M]
    attn = xq @ xk.transpose(-1, -2)  # [B, H, M, F] @ [B, H, F, M] -> [B, H, M, M]
    bias_bar = bias - eta @ grad  # [B, H, M, M] @ [B, H, M, F] -> [B, H, M, F]
    z_bar = xq @ weight - (eta * attn) @ grad + bias_bar  # [B, H, M, F]
    lr_grad = lr.unsqueeze(-1) * grad  # [B, H, M, 1] * [B, H, M, F] -> [B, H, M, F]
    grad_weight = xk.transpose(-1, -2) @ lr_grad  # [B, H, F, M] @ [B, H, M, F] -> [B, H, F, F]
    grad_bias = lr_grad.sum(-2, keepdim=True)  # [B, H, 1, F]
    return z_bar, grad_weight, grad_bias


def inner_update(
    state: TTTState,
    xk: torch.Tensor,
    xv: torch.Tensor,
    lr: torch.Tensor,
    tau: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token's inner step from a carried state (the streaming twin of the dual form).

    Args:
        state: carried fast weights (W, b at the mini-batch start, running sums).
        xk, xv: `[B, H, 1, F]` the token's key and value.
        lr: `[B, H]` the token's inner learning rate.
        tau: `[B]` position factor τ at each user's `pos`.
        ln_weight, ln_bias: `[H, F]` inner LayerNorm parameters.
        eps: LayerNorm epsilon.
    Returns:
        `(weight_bar, bias_bar, grad_weight, grad_bias)`: the weights the token reads,
        `[B, H, F, F]` and `[B, H, 1, F]`, and the updated running sums (same shapes).
    """
    bias0 = state.bias.unsqueeze(-2)  # [B, H, 1, F]
    z = xk @ state.weight + bias0  # [B, H, 1, F] @ [B, H, F, F] -> [B, H, 1, F]
    grad = inner_loss_grad(z, xv - xk, ln_weight, ln_bias, eps)  # [B, H, 1, F]
    lr_grad = lr[..., None, None] * grad  # [B, H, 1, 1] * [B, H, 1, F] -> [B, H, 1, F]
    # [B, H, F, 1] @ [B, H, 1, F] -> [B, H, F, F]
    grad_weight = state.grad_weight + xk.transpose(-1, -2) @ lr_grad
    grad_bias = state.grad_bias.unsqueeze(-2) + lr_grad  # [B, H, 1, F]
    tau = tau[:, None, None, None]  # [B, 1, 1, 1]
    return state.weight - tau * grad_weight, bias0 - tau * grad_bias, grad_weight, grad_bias


class TTTLinear(nn.Module):
    """The TTT-Linear sequence layer: projections, inner learning rate and mini-batch split."""

    def __init__(self, config: TTTLinearConfig) -> None:
        super().__init__()
        self.config = config
        width, heads, head_dim = config.hidden_size, config.num_heads, config.head_dim
        size = config.mini_batch_size
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.g_proj = nn.Linear(width, width, bias=False) if config.use_gate else None
        self.post_norm = nn.LayerNorm(width, eps=config.norm_eps)
        # θ_lr reads the full-width token, one scalar per head.
        self.lr_weight = nn.Parameter(torch.randn(heads, width) * config.initializer_range)
        self.lr_bias = nn.Parameter(torch.zeros(heads))
        self.token_offset = nn.Parameter(torch.zeros(size))  # δ_i, learnable, init 0
        self.register_buffer("token_idx", 1.0 / torch.arange(1, size + 1, dtype=torch.float32))
        self.ttt_norm_weight = nn.Parameter(torch.ones(heads, head_dim))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(heads, head_dim))
        self.weight0 = nn.Parameter(torch.randn(heads, head_dim, head_dim) * config.inner_init_std)
        self.bias0 = nn.Parameter(torch.zeros(heads, head_dim))
        rope = rope_tables(size, head_dim, config.rope_theta)
        self.register_buffer("rope", rope, persistent=False)  # [2, M, F]
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.g_proj):
            if linear is not None:
                nn.init.normal_(linear.weight, std=config.initializer_range)

    def init_state(self, batch_size: int) -> TTTState:
        """Fresh fast weights `(W₀, b₀)` for `batch_size` users, empty running sums."""
        heads, head_dim = self.config.num_heads, self.config.head_dim
        weight = self.weight0.unsqueeze(0).expand(batch_size, -1, -1, -1).clone()
        bias = self.bias0.unsqueeze(0).expand(batch_size, -1, -1).clone()
        dtype, device = self.weight0.dtype, self.weight0.device
        zeros_w = torch.zeros(batch_size, heads, head_dim, head_dim, dtype=dtype, device=device)
        zeros_b = torch.zeros(batch_size, heads, head_dim, dtype=dtype, device=device)
        pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        return TTTState(weight, bias, zeros_w, zeros_b, pos)

    def tau(self) -> torch.Tensor:
        """`[M]` position factors `τ_i = max(0, 1/i + δ_i)`."""
        return torch.clamp_min(self.token_idx + self.token_offset, 0.0)

    def _qkv_lr(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values `[B, H, L, F]` (RoPE'd if enabled) and lr `[B, H, L]`.

        The four projections run as one matmul (the concatenated weight is a constant in an
        exported graph), which keeps the per-click graph short.
        """
        cfg = self.config
        batch, length, width = x.shape
        heads, head_dim = cfg.num_heads, cfg.head_dim
        weight = torch.cat(
            [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.lr_weight]
        )  # [3D + H, D]
        proj = x @ weight.t()  # [B, L, D] @ [D, 3D + H] -> [B, L, 3D + H]
        qkv = proj[..., : 3 * width].reshape(batch, length, 3, heads, head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [B, L, 3, H, F] -> [3, B, H, L, F]
        qk = apply_rope(qkv[:2], cos, sin) if cfg.use_rope else qkv[:2]  # [2, B, H, L, F]
        logits = proj[..., 3 * width :] + self.lr_bias  # [B, L, H]
        lr = cfg.base_lr * torch.sigmoid(logits) / head_dim
        return qk[0], qk[1], qkv[2], lr.transpose(1, 2)  # lr: [B, H, L]

    def _output(self, xq: torch.Tensor, z_bar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`XQ + LN_h(Z̄)` → merge heads → LayerNorm → optional gate → output projection."""
        eps = self.config.norm_eps
        y = xq + head_layer_norm(z_bar, self.ttt_norm_weight, self.ttt_norm_bias, eps)
        batch, _, length, _ = y.shape
        y = y.transpose(1, 2).reshape(batch, length, -1)  # [B, H, L, F] -> [B, L, D]
        y = self.post_norm(y)
        if self.g_proj is not None:
            y = F_.gelu(self.g_proj(x), approximate="tanh") * y
        return self.o_proj(y)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, TTTState]:
        """Full-sequence TTT over right-padded tokens, mini-batch by mini-batch.

        Args:
            x: `[B, L, D]` normalised inputs; valid tokens first, pads after.
            mask: `[B, L]` bool, True on valid tokens.
        Returns:
            `(y, state)`: `[B, L, D]` outputs (rows at pads are meaningless) and the state
            after the valid tokens, equal to stepping them one at a time from `init_state`.
        """
        cfg = self.config
        batch, length, width = x.shape
        size = cfg.mini_batch_size
        num_mb = max(1, math.ceil(length / size))
        pad = num_mb * size - length
        x = F_.pad(x, (0, 0, 0, pad))  # [B, K·M, D]
        mask = F_.pad(mask, (0, pad), value=False)  # [B, K·M]
        rope = self.rope.to(x.dtype).repeat(1, num_mb, 1)  # [2, M, F] -> [2, K·M, F]
        cos, sin = rope[0], rope[1]
        xq, xk, xv, lr = self._qkv_lr(x, cos, sin)
        lr = lr * mask.unsqueeze(1).to(lr.dtype)  # pad tokens take no inner step
        tau = self.tau()
        state = self.init_state(batch)
        if size == 1:
            z_bar, state = self._online_gd(state, xq, xk, xv, lr, tau[0])
            return self._output(xq, z_bar, x)[:, :length], state
        outputs = []
        for k in range(num_mb):
            window = slice(k * size, (k + 1) * size)
            z_bar, grad_w, grad_b = dual_form_minibatch(
                state.weight,
                state.bias.unsqueeze(-2),
                xq[:, :, window],
                xk[:, :, window],
                xv[:, :, window],
                lr[:, :, window],
                tau,
                self.ttt_norm_weight,
                self.ttt_norm_bias,
                cfg.norm_eps,
            )
            outputs.append(z_bar)
            state = close_minibatch(state, grad_w, grad_b, tau[-1], mask[:, window])
        z_bar = torch.cat(outputs, dim=2)  # [B, H, K·M, F]
        y = self._output(xq, z_bar, x)
        return y[:, :length], state

    def _online_gd(
        self,
        state: TTTState,
        xq: torch.Tensor,
        xk: torch.Tensor,
        xv: torch.Tensor,
        lr: torch.Tensor,
        tau: torch.Tensor,
    ) -> tuple[torch.Tensor, TTTState]:
        """`mini_batch_size = 1`: plain online GD, token by token, with the fewest ops.

        The dual form with M = 1 reduces to `W ← W − τ·lr·XKᵀG`, then reading `XQ·W + b`; a
        pad token has lr = 0 and so leaves `W` as it is, and with M = 1 no mini-batch is ever
        left open (pos and the running sums stay 0). Written out, the per-token loop runs
        about half the ops of the general path, which is what bounds its speed on small
        training batches (the loop is sequential by nature: each gradient reads the last W).

        Args:
            xq, xk, xv: `[B, H, L, F]`; lr: `[B, H, L]` (0 on pads); tau: scalar τ₁.
        Returns:
            `(z_bar [B, H, L, F], state)` as the general path returns them.
        """
        eps = self.config.norm_eps
        weight, bias = state.weight, state.bias.unsqueeze(-2)  # [B, H, F, F], [B, H, 1, F]
        target = xv - xk  # [B, H, L, F]
        eta = (tau * lr).unsqueeze(-1).unsqueeze(-1)  # [B, H, L, 1, 1]
        outputs = []
        for t in range(xq.shape[2]):
            key = xk[:, :, t : t + 1]  # [B, H, 1, F]
            z = key @ weight + bias  # [B, H, 1, F] @ [B, H, F, F] -> [B, H, 1, F]
            grad = inner_loss_grad(
                z, target[:, :, t : t + 1], self.ttt_norm_weight, self.ttt_norm_bias, eps
            )
            step = eta[:, :, t] * grad  # [B, H, 1, F]
            weight = weight - key.transpose(-1, -2) @ step  # [B, H, F, 1] @ [B, H, 1, F]
            bias = bias - step
            outputs.append(xq[:, :, t : t + 1] @ weight + bias)  # [B, H, 1, F]
        final = TTTState(weight, bias[:, :, 0], state.grad_weight, state.grad_bias, state.pos)
        return torch.cat(outputs, dim=2), final

    def step(
        self, x: torch.Tensor, state: TTTState, mask: torch.Tensor
    ) -> tuple[torch.Tensor, TTTState]:
        """One token per user from a carried state: O(H·F²), no Python branching.

        Args:
            x: `[B, D]` the normalised token of each user.
            state: the users' carried fast weights (each may sit at a different `pos`).
            mask: `[B]` bool, False where the user has no click (its state is kept).
        Returns:
            `(y, state)`: `[B, D]` outputs and the new state.
        """
        y, new_state, _ = self._step(x, state, mask, with_loss=False)
        return y, new_state

    def step_with_loss(
        self, x: torch.Tensor, state: TTTState, mask: torch.Tensor
    ) -> tuple[torch.Tensor, TTTState, torch.Tensor]:
        """`step`, plus `[B]` the token's inner loss under the current fast weights.

        The current fast weights are the ones the previous token read, `W − τ_{pos−1}·ΣG`
        (the committed `W` at a mini-batch boundary): how badly the layer's own
        reconstruction task fits the new click before the click is learned from.
        """
        return self._step(x, state, mask, with_loss=True)

    def current_inner_loss(
        self, state: TTTState, xk: torch.Tensor, xv: torch.Tensor
    ) -> torch.Tensor:
        """`[B]` `½‖LN_h(XK·W_now + b_now) − (XV − XK)‖²` summed over heads and head width."""
        previous = (state.pos - 1).clamp_min(0)  # [B]
        tau = torch.where(state.pos > 0, self.tau()[previous], torch.zeros_like(previous))
        tau = tau.to(xk.dtype)[:, None, None, None]  # [B, 1, 1, 1]
        weight = state.weight - tau * state.grad_weight  # [B, H, F, F]
        bias = (state.bias - tau[..., 0] * state.grad_bias).unsqueeze(-2)  # [B, H, 1, F]
        z = xk @ weight + bias  # [B, H, 1, F]
        fit = head_layer_norm(z, self.ttt_norm_weight, self.ttt_norm_bias, self.config.norm_eps)
        return 0.5 * (fit - (xv - xk)).pow(2).sum(dim=(1, 2, 3))

    def _step(
        self, x: torch.Tensor, state: TTTState, mask: torch.Tensor, with_loss: bool
    ) -> tuple[torch.Tensor, TTTState, torch.Tensor | None]:
        cfg = self.config
        rope = self.rope.to(x.dtype)[:, state.pos, None, None]  # [2, M, F] -> [2, B, 1, 1, F]
        cos, sin = rope[0], rope[1]
        xq, xk, xv, lr = self._qkv_lr(x.unsqueeze(1), cos, sin)  # [B, H, 1, F], lr [B, H, 1]
        loss = self.current_inner_loss(state, xk, xv) if with_loss else None
        tau = self.tau()[state.pos]  # [B]
        weight_bar, bias_bar, grad_w, grad_b = inner_update(
            state, xk, xv, lr[..., 0], tau, self.ttt_norm_weight, self.ttt_norm_bias, cfg.norm_eps
        )
        z_bar = xq @ weight_bar + bias_bar  # [B, H, 1, F] @ [B, H, F, F] -> [B, H, 1, F]
        y = self._output(xq, z_bar, x.unsqueeze(1))[:, 0]  # [B, D]
        new_state = commit_step(
            state, weight_bar, bias_bar[:, :, 0], grad_w, grad_b[:, :, 0], cfg.mini_batch_size
        )
        return y, select_state(mask, new_state, state), loss


def close_minibatch(
    state: TTTState,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
    tau_last: torch.Tensor,
    mask: torch.Tensor,
) -> TTTState:
    """State after a mini-batch of the full forward, per user.

    A full mini-batch commits `W ← W − τ_M·ΣW`; a partly filled one (the user's last)
    keeps `W` and carries its sums and fill count, as `step` would; an empty one changes
    nothing.

    Args:
        state: state at the mini-batch start.
        grad_weight: `[B, H, F, F]` the mini-batch's Σ lr_j XK_jᵀ G_j.
        grad_bias: `[B, H, 1, F]` the mini-batch's Σ lr_j G_j.
        tau_last: scalar τ_M.
        mask: `[B, M]` bool valid tokens of the mini-batch.
    Returns:
        The next state.
    """
    count = mask.sum(-1)  # [B]
    full = (count == mask.shape[-1])[:, None, None, None]  # [B, 1, 1, 1]
    some = (count > 0)[:, None, None, None]
    grad_bias = grad_bias[:, :, 0]  # [B, H, F]
    weight = torch.where(full, state.weight - tau_last * grad_weight, state.weight)
    bias = torch.where(full[..., 0], state.bias - tau_last * grad_bias, state.bias)
    carried_w = torch.where(full, torch.zeros_like(grad_weight), grad_weight)
    carried_b = torch.where(full[..., 0], torch.zeros_like(grad_bias), grad_bias)
    return TTTState(
        weight=weight,
        bias=bias,
        grad_weight=torch.where(some, carried_w, state.grad_weight),
        grad_bias=torch.where(some[..., 0], carried_b, state.grad_bias),
        pos=torch.where(count > 0, count % mask.shape[-1], state.pos),
    )


def commit_step(
    state: TTTState,
    weight_bar: torch.Tensor,
    bias_bar: torch.Tensor,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
    mini_batch_size: int,
) -> TTTState:
    """Advance `pos`; at the last slot of a mini-batch commit `W ← W̄` and reset the sums.

    Written with `torch.where` on `pos == M − 1` so every user may sit at a different `pos`
    and the graph exports to ONNX without control flow.

    Args:
        state: the state before the token.
        weight_bar, bias_bar: `[B, H, F, F]`, `[B, H, F]` the weights the token read.
        grad_weight, grad_bias: `[B, H, F, F]`, `[B, H, F]` running sums including the token.
        mini_batch_size: M.
    Returns:
        The state after the token.
    """
    last = state.pos == mini_batch_size - 1  # [B]
    last_w = last[:, None, None, None]  # [B, 1, 1, 1]
    last_b = last[:, None, None]  # [B, 1, 1]
    return TTTState(
        weight=torch.where(last_w, weight_bar, state.weight),
        bias=torch.where(last_b, bias_bar, state.bias),
        grad_weight=grad_weight.masked_fill(last_w, 0.0),
        grad_bias=grad_bias.masked_fill(last_b, 0.0),
        pos=(state.pos + 1).masked_fill(last, 0),
    )


def select_state(mask: torch.Tensor, new: TTTState, old: TTTState) -> TTTState:
    """Per user, `new` where `mask` is True and `old` elsewhere (pads keep their state)."""
    mask_w = mask[:, None, None, None]  # [B, 1, 1, 1]
    mask_b = mask[:, None, None]  # [B, 1, 1]
    return TTTState(
        weight=torch.where(mask_w, new.weight, old.weight),
        bias=torch.where(mask_b, new.bias, old.bias),
        grad_weight=torch.where(mask_w, new.grad_weight, old.grad_weight),
        grad_bias=torch.where(mask_b, new.grad_bias, old.grad_bias),
        pos=torch.where(mask, new.pos, old.pos),
    )


class TTTBlock(nn.Module):
    """Pre-norm block: `h + TTT(RMSNorm(h))`, then `h + SwiGLU(RMSNorm(h))`."""

    def __init__(self, config: TTTLinearConfig) -> None:
        super().__init__()
        self.seq_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.ttt = TTTLinear(config)
        self.ffn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.dropout = nn.Dropout(config.dropout)
        for linear in (self.mlp.gate, self.mlp.up, self.mlp.down):
            nn.init.normal_(linear.weight, std=config.initializer_range)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, TTTState]:
        """Full sequence. Args: `h [B, L, D]`, right-padded `mask [B, L]`. Returns `[B, L, D]`
        and the layer's state after the valid tokens."""
        y, state = self.ttt(self.seq_norm(h), mask)
        h = h + self.dropout(y)
        return h + self.dropout(self.mlp(self.ffn_norm(h))), state

    def step(
        self, h: torch.Tensor, state: TTTState, mask: torch.Tensor
    ) -> tuple[torch.Tensor, TTTState]:
        """One token. Args: `h [B, D]`, carried `state`, `mask [B]`. Returns `[B, D]`, state."""
        y, state = self.ttt.step(self.seq_norm(h), state, mask)
        h = h + self.dropout(y)
        return h + self.dropout(self.mlp(self.ffn_norm(h))), state

    def step_with_loss(
        self, h: torch.Tensor, state: TTTState, mask: torch.Tensor
    ) -> tuple[torch.Tensor, TTTState, torch.Tensor]:
        """`step`, plus the TTT layer's `[B]` inner loss of the token before it is learned."""
        y, state, loss = self.ttt.step_with_loss(self.seq_norm(h), state, mask)
        h = h + self.dropout(y)
        return h + self.dropout(self.mlp(self.ffn_norm(h))), state, loss
