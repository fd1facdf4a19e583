"""SASRec, GRU4Rec and DIN: shapes, padding invariance, score_all, a smoke training, configs."""

from __future__ import annotations

import pytest
import torch

from seqrec.models.base import SequentialRecommender
from seqrec.models.din import DIN, DINConfig
from seqrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from seqrec.models.sasrec import SASRec, SASRecConfig, compact_history

NUM_ITEMS = 40
MAX_LEN = 8
SMALL = {"num_items": NUM_ITEMS, "hidden_size": 16, "max_len": MAX_LEN}


def make_sasrec() -> SASRec:
    return SASRec(SASRecConfig(**SMALL, num_layers=2, num_heads=2, inner_size=32))


def make_gru4rec() -> GRU4Rec:
    return GRU4Rec(GRU4RecConfig(**SMALL, num_layers=2, gru_hidden_size=24))


def make_din() -> DIN:
    return DIN(DINConfig(**SMALL, attention_hidden_sizes=(16, 8), mlp_hidden_sizes=(16,)))


MAKERS = {"sasrec": make_sasrec, "gru4rec": make_gru4rec, "din": make_din}


@pytest.fixture(params=sorted(MAKERS))
def model(request) -> SequentialRecommender:
    torch.manual_seed(0)
    return MAKERS[request.param]()


# Histories of different lengths; the last one is longer than MAX_LEN.
HISTORIES = [[3, 7, 1], [5], [2, 9, 4, 4, 11, 30], list(range(1, 13))]
CANDIDATES = torch.tensor([[1, 2, 3, 40], [5, 6, 7, 8], [11, 12, 4, 2], [12, 13, 1, 9]])


def right_padded(histories: list[list[int]], width: int) -> torch.Tensor:
    out = torch.zeros(len(histories), width, dtype=torch.long)
    for row, hist in enumerate(histories):
        out[row, : len(hist)] = torch.tensor(hist)
    return out


def left_padded(histories: list[list[int]], width: int) -> torch.Tensor:
    out = torch.zeros(len(histories), width, dtype=torch.long)
    for row, hist in enumerate(histories):
        out[row, width - len(hist) :] = torch.tensor(hist)
    return out


def scattered_pads(histories: list[list[int]]) -> torch.Tensor:
    """A zero after every click, plus two leading zeros: pads everywhere."""
    rows = [[0, 0] + [x for item in hist for x in (item, 0)] for hist in histories]
    return right_padded(rows, max(len(r) for r in rows) + 1)


def unpadded_scores(model: SequentialRecommender) -> torch.Tensor:
    """Each history scored on its own, with no padding at all."""
    rows = [
        model.score(torch.tensor([hist]), CANDIDATES[row : row + 1])
        for row, hist in enumerate(HISTORIES)
    ]
    return torch.cat(rows)


def test_compact_history_keeps_last_valid_clicks_right_aligned():
    history = torch.tensor([[0, 1, 0, 2, 3, 0, 4], [0, 0, 0, 0, 0, 0, 5], [0] * 7])
    compact, lengths = compact_history(history, max_len=3)
    torch.testing.assert_close(compact, torch.tensor([[2, 3, 4], [5, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(lengths, torch.tensor([3, 1, 0]))


def test_output_shapes(model):
    history = right_padded(HISTORIES, 12)
    assert model.score(history, CANDIDATES).shape == (4, 4)
    assert model.score_all(history).shape == (4, NUM_ITEMS + 1)


def test_padding_does_not_change_scores(model):
    model.eval()
    with torch.no_grad():
        expected = unpadded_scores(model)
        for history in (
            right_padded(HISTORIES, 12),
            right_padded(HISTORIES, 20),  # extra trailing pads
            left_padded(HISTORIES, 15),
            scattered_pads(HISTORIES),
        ):
            torch.testing.assert_close(model.score(history, CANDIDATES), expected)


def test_only_last_max_len_clicks_count(model):
    model.eval()
    long_history = torch.tensor([list(range(1, 13))])
    truncated = long_history[:, -MAX_LEN:]
    changed_old_click = long_history.clone()
    changed_old_click[0, 0] = 30  # older than the window: must not matter
    with torch.no_grad():
        expected = model.score_all(truncated)
        torch.testing.assert_close(model.score_all(long_history), expected)
        torch.testing.assert_close(model.score_all(changed_old_click), expected)


def test_scores_depend_on_the_history(model):
    model.eval()
    with torch.no_grad():
        a = model.score_all(torch.tensor([[1, 2, 3]]))
        b = model.score_all(torch.tensor([[7, 30, 12]]))
    assert not torch.allclose(a, b)


def test_score_all_agrees_with_score(model):
    model.eval()
    history = right_padded(HISTORIES, 12)
    with torch.no_grad():
        all_scores = model.score_all(history)
        torch.testing.assert_close(
            all_scores.gather(1, CANDIDATES), model.score(history, CANDIDATES)
        )


def test_din_score_all_chunking_gives_the_same_scores():
    torch.manual_seed(0)
    model = make_din().eval()
    history = right_padded(HISTORIES, 12)
    items = torch.arange(NUM_ITEMS + 1).expand(len(HISTORIES), -1)
    model.config.score_all_chunk_elements = 1  # one item per chunk
    with torch.no_grad():
        torch.testing.assert_close(model.score_all(history), model.score(history, items))


def synthetic_batches(num_batches: int, batch_size: int, seed: int):
    """Sequences that count up by one; the next item is the positive, plus 4 random negatives."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(num_batches):
        length = int(torch.randint(3, MAX_LEN + 1, (1,), generator=gen))
        start = torch.randint(1, NUM_ITEMS - MAX_LEN - 1, (batch_size, 1), generator=gen)
        history = start + torch.arange(length)  # [b, length]
        positive = history[:, -1:] + 1  # [b, 1]
        negatives = torch.randint(1, NUM_ITEMS + 1, (batch_size, 4), generator=gen)
        items = torch.cat([positive, negatives], dim=1)
        labels = torch.zeros(batch_size, 5)
        labels[:, 0] = 1.0
        yield history, items, labels


def mean_loss(model: SequentialRecommender, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model.loss(*batch).item() for batch in batches) / len(batches)


def test_one_epoch_lowers_the_loss(model):
    torch.manual_seed(0)
    held_out = list(synthetic_batches(4, 64, seed=1))
    before = mean_loss(model, held_out)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for history, items, labels in synthetic_batches(40, 32, seed=2):
        optimizer.zero_grad()
        loss = model.loss(history, items, labels)
        loss.backward()
        optimizer.step()
    after = mean_loss(model, held_out)
    assert after < before - 0.01, (before, after)


@pytest.mark.parametrize(
    ("config_class", "kwargs", "match"),
    [
        (SASRecConfig, {"num_items": 0}, "num_items"),
        (SASRecConfig, {"num_items": 5, "hidden_size": 10, "num_heads": 3}, "num_heads"),
        (SASRecConfig, {"num_items": 5, "num_layers": 0}, "num_layers"),
        (SASRecConfig, {"num_items": 5, "attn_dropout": 1.0}, "attn_dropout"),
        (GRU4RecConfig, {"num_items": 5, "num_layers": 0}, "num_layers"),
        (GRU4RecConfig, {"num_items": 5, "gru_hidden_size": 0}, "gru_hidden_size"),
        (GRU4RecConfig, {"num_items": 5, "dropout": -0.1}, "dropout"),
        (DINConfig, {"num_items": 5, "attention_hidden_sizes": ()}, "attention_hidden_sizes"),
        (DINConfig, {"num_items": 5, "mlp_hidden_sizes": (8, 0)}, "mlp_hidden_sizes"),
        (DINConfig, {"num_items": 5, "score_all_chunk_elements": 0}, "score_all_chunk_elements"),
    ],
)
def test_config_validation(config_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config_class(**kwargs)


def test_din_config_accepts_lists_as_tuples():
    config = DINConfig(num_items=5, attention_hidden_sizes=[8, 4], mlp_hidden_sizes=[8])
    assert config.attention_hidden_sizes == (8, 4)
    assert config.mlp_hidden_sizes == (8,)


# ---------------------------------------------------------------- GRU4Rec carries its state


def _gru_with_long_window(max_len: int) -> GRU4Rec:
    torch.manual_seed(1)
    config = GRU4RecConfig(num_items=NUM_ITEMS, hidden_size=16, max_len=max_len, num_layers=2)
    return GRU4Rec(config).eval()


def test_gru4rec_stepping_equals_its_forward_click_by_click():
    model = _gru_with_long_window(max_len=300)
    generator = torch.Generator().manual_seed(2)
    history = torch.randint(1, NUM_ITEMS + 1, (3, 250), generator=generator)
    history[1, 100:] = 0  # a shorter user: pads never move its state
    state = model.init_state(3)
    with torch.no_grad():
        for t in range(history.shape[1]):
            state, feature = model.step(state, history[:, t])
            if t in (0, 9, 99, 249):
                expected = model.encode(history[:, : t + 1])
                torch.testing.assert_close(feature, expected, atol=1e-5, rtol=1e-4)
        expected = model.encode(history[1:2, :100])
        torch.testing.assert_close(feature[1:2], expected, atol=1e-5, rtol=1e-4)


def test_gru4rec_step_graph_under_onnxruntime_equals_the_torch_step(tmp_path):
    """The device contract TTT4Rec has: state, surprise and the held list's scores in one run."""
    import numpy as np
    import onnx

    from device.onnx_runtime import OnnxState, OnnxStepModel
    from seqrec.models.gru4rec import GRU4RecState
    from seqrec.onnx_export import export_scorer, export_step

    model = _gru_with_long_window(max_len=MAX_LEN)
    step = export_step(model, tmp_path / "step.onnx")
    runner = OnnxStepModel(step, export_scorer(model, tmp_path / "scorer.onnx"))
    assert runner.model_name == "gru4rec" and runner.state_names == GRU4RecState.names()
    clicks = torch.tensor([[4, 9], [0, 3], [17, 0], [40, 1], [5, 5], [6, 7]])  # 0 = no click
    candidates = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    table = model.all_item_features()
    state, onnx_state = model.init_state(2), runner.init_state(2)
    for items in clicks:
        with torch.no_grad():
            state, feature, surprise, scores = model.click(state, items, candidates, table)
        onnx_state, found_feature, found_surprise, found_scores = runner.click(
            onnx_state, items.numpy(), candidates.numpy()
        )
        for found, want in zip(onnx_state.arrays, state.tensors()):
            np.testing.assert_allclose(found, want.numpy(), atol=1e-5)
        np.testing.assert_allclose(found_feature, feature.numpy(), atol=1e-5)
        clicked = (items != 0).numpy()  # a 0 gives a meaningless surprise row
        np.testing.assert_allclose(found_surprise[clicked], surprise.numpy()[clicked], atol=1e-4)
        np.testing.assert_allclose(found_scores, scores.numpy(), atol=1e-5)
    assert np.all(found_surprise[:, 4] == 0)  # a GRU has no inner loss
    back = OnnxState.from_bytes(onnx_state.to_bytes())  # a device stores and reloads it
    assert back.names == onnx_state.names
    for a, b in zip(back.arrays, onnx_state.arrays):
        np.testing.assert_array_equal(a, b)
    torch.testing.assert_close(GRU4RecState.from_bytes(back.to_bytes()).hidden, state.hidden)
    ops = {node.op_type for node in onnx.load(str(step)).graph.node}
    assert not ops & {"Loop", "Scan", "If"}


@pytest.mark.parametrize("name", ["gru4rec", "ttt4rec"])
def test_the_whole_history_reading_is_what_stepping_every_click_gives(name):
    from seqrec.evaluation import reading_whole_history
    from seqrec.models import build_model

    torch.manual_seed(3)
    options = {"mini_batch_size": 4} if name == "ttt4rec" else {}
    model = build_model(name, num_items=NUM_ITEMS, max_len=8, hidden_size=16, **options).eval()
    with torch.no_grad():  # weights far from their small initialisation, so histories differ
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    history = torch.randint(1, NUM_ITEMS + 1, (2, 40), generator=torch.Generator().manual_seed(4))
    candidates = torch.arange(1, NUM_ITEMS + 1).expand(2, NUM_ITEMS)
    state = model.init_state(2)
    with torch.no_grad():
        for t in range(history.shape[1]):
            state, feature = model.step(state, history[:, t])
        stepped = model.score_features(feature, candidates)
        window = model.score(history, candidates)  # the last 8 clicks only
        with reading_whole_history(model, history.shape[1]):
            whole = model.score(history, candidates)
    torch.testing.assert_close(whole, stepped, atol=1e-4, rtol=1e-4)
    assert (window - stepped).abs().max() > 0.1 * stepped.abs().max()
    assert model.config.max_len == 8  # the reading ends with the block


def test_a_model_that_re_reads_its_window_has_no_whole_history_reading():
    from seqrec.evaluation import reading_whole_history

    with (
        pytest.raises(ValueError, match="carries no state"),
        reading_whole_history(make_sasrec(), 9),
    ):
        pass
