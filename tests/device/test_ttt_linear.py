"""TTT-Linear layer: closed-form gradient, dual form, streaming state, padding, config."""

from __future__ import annotations

import pytest
import torch

from seqrec.models.ttt_linear import (
    TTTBlock,
    TTTLinear,
    TTTLinearConfig,
    TTTState,
    dual_form_minibatch,
    inner_loss,
    inner_loss_grad,
)

torch.set_num_threads(1)


def make_layer(mini_batch_size: int, **overrides) -> TTTLinear:
    torch.manual_seed(0)
    config = TTTLinearConfig(
        hidden_size=16,
        num_heads=2,
        mini_batch_size=mini_batch_size,
        intermediate_size=32,
        **overrides,
    )
    layer = TTTLinear(config).double()
    with torch.no_grad():  # non-trivial learned parts so the test sees every term
        layer.token_offset.normal_(0.0, 0.2)
        layer.lr_bias.normal_(0.0, 1.0)
        layer.ttt_norm_weight.normal_(1.0, 0.2)
        layer.ttt_norm_bias.normal_(0.0, 0.2)
        layer.bias0.normal_(0.0, 0.2)
    return layer


def stream(layer: TTTLinear, x: torch.Tensor, mask: torch.Tensor):
    """Step every token of `x [B, L, D]` one at a time; returns outputs `[B, L, D]`, state."""
    state = layer.init_state(x.shape[0])
    outputs = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state, mask[:, t])
        outputs.append(y)
    return torch.stack(outputs, dim=1), state


def assert_states_close(a: TTTState, b: TTTState, **tol) -> None:
    for name in ("weight", "bias", "grad_weight", "grad_bias"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), **tol, msg=name)
    assert torch.equal(a.pos, b.pos)


def test_inner_grad_matches_autograd():
    torch.manual_seed(1)
    batch, heads, tokens, width = 2, 3, 5, 8
    xk = torch.randn(batch, heads, tokens, width, dtype=torch.float64)
    target = torch.randn(batch, heads, tokens, width, dtype=torch.float64)
    weight = torch.randn(batch, heads, width, width, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(batch, heads, 1, width, dtype=torch.float64, requires_grad=True)
    ln_w = torch.randn(heads, width, dtype=torch.float64)
    ln_b = torch.randn(heads, width, dtype=torch.float64)
    z = xk @ weight + bias
    loss = inner_loss(z, target, ln_w, ln_b, 1e-6)
    auto_w, auto_b = torch.autograd.grad(loss, (weight, bias))
    grad_z = inner_loss_grad(z.detach(), target, ln_w, ln_b, 1e-6)
    torch.testing.assert_close(xk.transpose(-1, -2) @ grad_z, auto_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_z.sum(-2, keepdim=True), auto_b, rtol=1e-10, atol=1e-10)


def primal_minibatch(weight, bias, xq, xk, xv, lr, tau, ln_w, ln_b):
    """Reference: W̄_i = W₀ − τ_i Σ_{j≤i} lr_j ∇_W ℓ_j(W₀) with autograd, token by token."""
    outputs = []
    grads_w, grads_b = [], []
    for j in range(xq.shape[-2]):
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        loss = inner_loss(
            xk[..., j : j + 1, :] @ w + b, (xv - xk)[..., j : j + 1, :], ln_w, ln_b, 1e-6
        )
        g_w, g_b = torch.autograd.grad(loss, (w, b))
        grads_w.append(lr[..., j, None, None] * g_w)
        grads_b.append(lr[..., j, None, None] * g_b)
        w_bar = weight - tau[j] * sum(grads_w)
        b_bar = bias - tau[j] * sum(grads_b)
        outputs.append(xq[..., j : j + 1, :] @ w_bar + b_bar)
    return torch.cat(outputs, dim=-2), sum(grads_w), sum(grads_b)


@pytest.mark.parametrize("size", [1, 5])
def test_dual_form_matches_primal_with_autograd(size):
    torch.manual_seed(2)
    batch, heads, width = 2, 2, 6
    shape = (batch, heads, size, width)
    xq, xk, xv = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
    lr = torch.rand(batch, heads, size, dtype=torch.float64)
    tau = torch.rand(size, dtype=torch.float64)
    weight = torch.randn(batch, heads, width, width, dtype=torch.float64)
    bias = torch.randn(batch, heads, 1, width, dtype=torch.float64)
    ln_w = torch.randn(heads, width, dtype=torch.float64)
    ln_b = torch.randn(heads, width, dtype=torch.float64)
    dual = dual_form_minibatch(weight, bias, xq, xk, xv, lr, tau, ln_w, ln_b, 1e-6)
    primal = primal_minibatch(weight, bias, xq, xk, xv, lr, tau, ln_w, ln_b)
    for got, want in zip(dual, primal):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("size", [1, 16])
@pytest.mark.parametrize("use_rope", [True, False])
def test_step_matches_full_forward(size, use_rope):
    layer = make_layer(size, use_rope=use_rope)
    lengths = torch.tensor([40, 23, 7, 0])
    x = torch.randn(4, 40, 16, dtype=torch.float64)
    mask = torch.arange(40)[None] < lengths[:, None]  # right padding, different lengths
    full, full_state = layer(x, mask)
    streamed, streamed_state = stream(layer, x, mask)
    torch.testing.assert_close(streamed[mask], full[mask], rtol=0, atol=1e-10)
    assert_states_close(streamed_state, full_state, rtol=0, atol=1e-10)
    assert streamed_state.pos.tolist() == (lengths % size).tolist()


def test_online_gd_when_mini_batch_is_one():
    """With M = 1 the state after each token is W − τ₁·lr·∇ℓ(W): plain online GD."""
    layer = make_layer(1)
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    state = layer.init_state(1)
    for t in range(3):
        before = state.weight.clone()
        _, state = layer.step(x[:, t], state, torch.tensor([True]))
        assert not torch.equal(state.weight, before)
        assert torch.count_nonzero(state.grad_weight) == 0
        assert state.pos.item() == 0


def test_pad_tokens_never_change_state():
    layer = make_layer(4)
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    state = layer.init_state(3)
    for t in range(5):  # leave users mid-mini-batch with non-zero running sums
        _, state = layer.step(x[:, t], state, torch.tensor([True, True, t < 2]))
    _, after = layer.step(x[:, 5], state, torch.tensor([False, True, False]))
    names = ("weight", "bias", "grad_weight", "grad_bias", "pos")
    for name in names:
        assert torch.equal(getattr(after, name)[[0, 2]], getattr(state, name)[[0, 2]]), name
    # The valid click of user 1 does move its state, so the check above can fail.
    assert any(not torch.equal(getattr(after, n)[1], getattr(state, n)[1]) for n in names)


def test_trailing_pads_do_not_pollute_forward_state():
    layer = make_layer(4)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    short, short_state = layer(x[:, :6], torch.ones(2, 6, dtype=torch.bool))
    mask = torch.arange(11)[None] < 6
    padded, padded_state = layer(x, mask.expand(2, -1))
    torch.testing.assert_close(padded[:, :6], short, rtol=0, atol=1e-12)
    assert_states_close(padded_state, short_state, rtol=0, atol=1e-12)


def test_block_step_matches_forward():
    torch.manual_seed(3)
    block = TTTBlock(TTTLinearConfig(hidden_size=16, num_heads=4, mini_batch_size=16)).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    mask = torch.ones(2, 23, dtype=torch.bool)
    full, _ = block(x, mask)
    state = block.ttt.init_state(2)
    for t in range(23):
        y, state = block.step(x[:, t], state, mask[:, t])
        torch.testing.assert_close(y, full[:, t], rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("hidden_size", 0, "hidden_size"),
        ("num_heads", 3, "num_heads"),
        ("mini_batch_size", 0, "mini_batch_size"),
        ("base_lr", 0.0, "base_lr"),
        ("initializer_range", -1.0, "initializer_range"),
        ("dropout", 1.0, "dropout"),
        ("norm_eps", 0.0, "norm_eps"),
    ],
)
def test_config_rejects_bad_values(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        TTTLinearConfig(**{field: value})


def test_config_rejects_odd_head_width_with_rope():
    with pytest.raises(ValueError, match="even head width"):
        TTTLinearConfig(hidden_size=6, num_heads=2, use_rope=True)
    assert TTTLinearConfig(hidden_size=6, num_heads=2, use_rope=False).head_dim == 3
