"""TTT4Rec: streaming equals full forward, padding, carried state, scoring, training smoke."""

from __future__ import annotations

import pytest
import torch

from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig, TTT4RecState

torch.set_num_threads(1)

NUM_ITEMS = 60


def make_model(mini_batch_size: int = 16, dtype=torch.float64, **overrides) -> TTT4Rec:
    torch.manual_seed(0)
    config = TTT4RecConfig(
        num_items=NUM_ITEMS,
        hidden_size=32,
        num_heads=2,
        mini_batch_size=mini_batch_size,
        intermediate_size=64,
        initializer_range=0.1,
        **overrides,
    )
    model = TTT4Rec(config).to(dtype).eval()
    with torch.no_grad():  # move learned offsets off their init so every term is exercised
        for block in model.blocks:
            block.ttt.token_offset.normal_(0.0, 0.2)
            block.ttt.lr_bias.normal_(0.0, 1.0)
    return model


def random_history(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=generator)


def stream(model: TTT4Rec, history: torch.Tensor) -> tuple[TTT4RecState, torch.Tensor]:
    state = model.init_state(history.shape[0])
    features = state.feature
    for t in range(history.shape[1]):
        state, features = model.step(state, history[:, t])
    return state, features


def assert_states_close(a: TTT4RecState, b: TTT4RecState, atol: float) -> None:
    for name, x, y in zip(TTT4RecState.names(), a.tensors(), b.tensors()):
        if name == "pos":
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("size", [1, 16])
@pytest.mark.parametrize("length", [7, 23, 40])
def test_step_equals_full_forward_float64(size, length):
    model = make_model(size, num_layers=2)
    history = random_history(3, length)
    with torch.no_grad():
        full_state, full = model.encode_with_state(history)
        state, streamed = stream(model, history)
    torch.testing.assert_close(streamed, full, rtol=0, atol=1e-10)
    assert_states_close(state, full_state, atol=1e-10)
    assert state.pos.tolist() == [length % size] * 3


@pytest.mark.parametrize("size", [1, 16])
def test_step_equals_full_forward_float32(size):
    model = make_model(size, dtype=torch.float32)
    history = random_history(4, 40, seed=1)
    with torch.no_grad():
        full = model.encode(history)
        _, streamed = stream(model, history)
    torch.testing.assert_close(streamed, full, rtol=0, atol=1e-5)


def test_padding_anywhere_gives_same_features():
    model = make_model(4)
    clicks = random_history(1, 9, seed=2)
    pad = torch.zeros(1, 5, dtype=torch.long)
    variants = [
        torch.cat([pad, clicks], 1),  # left
        torch.cat([clicks, pad], 1),  # right
        torch.cat([clicks[:, :3], pad, clicks[:, 3:]], 1),  # middle
    ]
    with torch.no_grad():
        want = model.encode(clicks)
        for history in variants:
            torch.testing.assert_close(model.encode(history), want, rtol=0, atol=1e-12)


def test_interleaved_pads_put_users_at_different_positions():
    """Users whose clicks arrive at different times (pads in between) each match `encode`."""
    model = make_model(4)
    history = random_history(3, 30, seed=3)
    generator = torch.Generator().manual_seed(4)
    history[torch.rand(history.shape, generator=generator) < 0.4] = 0
    with torch.no_grad():
        full_state, full = model.encode_with_state(history)
        state, streamed = stream(model, history)
    torch.testing.assert_close(streamed, full, rtol=0, atol=1e-10)
    assert_states_close(state, full_state, atol=1e-10)
    assert len(set(state.pos.tolist())) > 1  # the users do sit at different positions


def test_pad_click_leaves_state_and_feature_unchanged():
    model = make_model(16)
    with torch.no_grad():
        state, _ = stream(model, random_history(2, 5))
        after, features = model.step(state, torch.tensor([0, 7]))
    for name, old, new in zip(TTT4RecState.names(), state.tensors(), after.tensors()):
        assert torch.equal(new[0], old[0]), name
    assert not torch.equal(after.grad_weight[1], state.grad_weight[1])
    assert torch.equal(features[0], state.feature[0])


def test_empty_history_feature_is_zero_and_matches_init_state():
    model = make_model(16)
    with torch.no_grad():
        state, features = model.encode_with_state(torch.zeros(2, 6, dtype=torch.long))
        no_columns = model.encode(torch.zeros(2, 0, dtype=torch.long))
    assert torch.count_nonzero(features) == 0
    assert torch.count_nonzero(no_columns) == 0
    assert_states_close(state, model.init_state(2), atol=0.0)


def test_continue_streaming_from_encoded_state():
    """A device can build its state from a history once, then step new clicks."""
    model = make_model(16)
    history = random_history(2, 37, seed=5)
    with torch.no_grad():
        state, _ = model.encode_with_state(history[:, :20])
        for t in range(20, 37):
            state, features = model.step(state, history[:, t])
        want = model.encode(history)
    torch.testing.assert_close(features, want, rtol=0, atol=1e-10)


def test_encode_reads_the_last_max_len_clicks():
    model = make_model(4, max_len=10)
    history = random_history(2, 25, seed=10)
    with torch.no_grad():
        state, features = model.encode_with_state(history)
        _, streamed = stream(model, history[:, -10:])
    torch.testing.assert_close(features, streamed, rtol=0, atol=1e-10)
    assert state.pos.tolist() == [10 % 4] * 2


def test_state_bytes_round_trip_and_size():
    model = TTT4Rec(TTT4RecConfig(num_items=NUM_ITEMS)).eval()  # defaults: D = 64, 1 layer
    with torch.no_grad():
        state, _ = stream(model, random_history(3, 21, seed=6))
    data = state.to_bytes()
    assert len(data) / 3 < 10_000  # a few KB per user
    restored = TTT4RecState.from_bytes(data)
    for old, new in zip(state.tensors(), restored.tensors()):
        assert new.dtype == old.dtype
        assert torch.equal(new, old)
    with pytest.raises(ValueError, match="length"):
        TTT4RecState.from_bytes(data[:-4])
    with pytest.raises(ValueError, match="magic"):
        TTT4RecState.from_bytes(b"XXXX" + data[4:])


def test_select_and_cat_users():
    model = make_model(4)
    history = random_history(4, 6, seed=7)
    with torch.no_grad():
        state, _ = stream(model, history)
        part, _ = stream(model, history[[2, 0]])
    picked = state.select([2, 0])
    assert_states_close(picked, part, atol=1e-12)
    joined = TTT4RecState.cat([state.select(slice(0, 1)), state.select(slice(1, 4))])
    assert_states_close(joined, state, atol=0.0)
    assert joined.batch_size == 4


def test_score_all_matches_score():
    model = make_model(16)
    history = random_history(3, 12, seed=8)
    items = random_history(3, 10, seed=9)
    with torch.no_grad():
        everything = model.score_all(history)
        some = model.score(history, items)
    assert everything.shape == (3, NUM_ITEMS + 1)
    torch.testing.assert_close(everything.gather(1, items), some, rtol=1e-9, atol=1e-12)


def test_config_validation():
    with pytest.raises(ValueError, match="num_layers"):
        TTT4RecConfig(num_items=10, num_layers=0)
    with pytest.raises(ValueError, match="mini_batch_size"):
        TTT4RecConfig(num_items=10, mini_batch_size=0)
    with pytest.raises(ValueError, match="num_heads"):
        TTT4RecConfig(num_items=10, hidden_size=64, num_heads=5)
    with pytest.raises(ValueError, match="num_items"):
        TTT4RecConfig(num_items=0)
    with pytest.raises(ValueError, match="target_tower"):
        TTT4RecConfig(num_items=10, target_tower="tower")


def test_the_embedding_target_tower_scores_against_the_shared_embedding():
    model = make_model(4, target_tower="embedding")
    history, items = random_history(3, 12, seed=8), random_history(3, 10, seed=9)
    assert not any("target_mlp" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        features = model.encode(history)
        want = torch.einsum("bcd,bd->bc", model.item_embedding(items), features)
        torch.testing.assert_close(model.score(history, items), want)
        # the carried state still equals the forward with this tower
        torch.testing.assert_close(stream(model, history)[1], features, rtol=0, atol=1e-9)


def shifted_sequences(count: int, length: int, generator: torch.Generator):
    """Synthetic histories `s, s+1, …` (mod NUM_ITEMS) whose next click is the next id."""
    start = torch.randint(0, NUM_ITEMS, (count, 1), generator=generator)
    seq = (start + torch.arange(length + 1)) % NUM_ITEMS + 1  # [count, length + 1]
    return seq[:, :length], seq[:, length]


def test_training_smoke_loss_falls():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    config = TTT4RecConfig(
        num_items=NUM_ITEMS,
        hidden_size=32,
        num_heads=2,
        mini_batch_size=4,
        intermediate_size=64,
        initializer_range=0.1,
        dropout=0.0,
    )
    model = TTT4Rec(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    histories, targets = shifted_sequences(2048, 12, generator)
    labels = torch.zeros(32, 5)
    labels[:, 0] = 1.0
    losses = []
    for start in range(0, len(histories), 32):  # one epoch
        negatives = torch.randint(1, NUM_ITEMS + 1, (32, 4), generator=generator)
        items = torch.cat([targets[start : start + 32, None], negatives], dim=1)
        loss = model.loss(histories[start : start + 32], items, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-8:]) / 8
    # 0.50 is the loss of guessing the 1:4 base rate; below it the model uses the history.
    assert first > 0.6
    assert last < 0.45, losses


@pytest.mark.parametrize("size", [1, 16])
def test_step_equals_full_forward_over_a_700_click_history_float32(size):
    """The state a device builds from every click of a long history: the drift of float32
    over 700 inner updates stays within 1e-4 of the full forward."""
    model = make_model(size, dtype=torch.float32, max_len=704)
    history = random_history(2, 700, seed=3)
    with torch.no_grad():
        full = model.encode(history)
        _, streamed = stream(model, history)
    torch.testing.assert_close(streamed, full, rtol=0, atol=1e-4)
