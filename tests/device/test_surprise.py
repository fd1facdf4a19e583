"""Surprise at each click: from TTT4Rec's step (torch), from a history model's runner, and as
request measures over the clicks since the list was fetched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from device.policies import ConsistencyPolicy, PolicyObservation
from device.policies.surprise import (
    CLICK_COLUMNS,
    NO_LIST,
    SURPRISE_MEASURES,
    SurpriseMeasure,
    build_request_measure,
    list_columns,
)
from device.session import DeviceSession
from seqrec.models.sasrec import SASRec, SASRecConfig
from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig
from seqrec.models.ttt_linear import inner_loss
from seqrec.runners import make_runner
from shared.candidates import CandidateList
from shared.device_format import SURPRISE_COLUMNS

torch.set_num_threads(1)
NUM_ITEMS = 40
COL = {name: i for i, name in enumerate(SURPRISE_COLUMNS)}


def make_model(mini_batch_size: int) -> TTT4Rec:
    torch.manual_seed(3)
    config = TTT4RecConfig(
        num_items=NUM_ITEMS,
        hidden_size=16,
        num_heads=2,
        mini_batch_size=mini_batch_size,
        intermediate_size=32,
        initializer_range=0.2,
    )
    return TTT4Rec(config).double().eval()


def history(batch: int, length: int) -> torch.Tensor:
    return torch.randint(
        1, NUM_ITEMS + 1, (batch, length), generator=torch.Generator().manual_seed(8)
    )


@pytest.mark.parametrize("mini_batch_size", [1, 4])
def test_step_with_surprise_steps_as_step_and_scores_the_click_first(mini_batch_size):
    model = make_model(mini_batch_size)
    clicks = history(3, 11)
    table = model.all_item_features()  # [I, D]
    window = model.config.drift_window
    state = plain = model.init_state(3)
    with torch.no_grad():
        for t in range(clicks.shape[1]):
            items = clicks[:, t]
            new, _, surprise = model.step_with_surprise(state, items)
            plain, _ = model.step(plain, items)
            for a, b in zip(new.tensors(), plain.tensors()):
                assert torch.equal(a, b)  # the surprise never changes the state
            logits = state.feature @ table.t()  # the state before the click
            logit = logits[torch.arange(3), items]
            torch.testing.assert_close(surprise[:, COL["logit"]], logit)
            nll = torch.logsumexp(logits[:, 1:], dim=1) - logit
            torch.testing.assert_close(surprise[:, COL["nll"]], nll)
            above = (logits[:, 1:] > logit[:, None]).double().mean(dim=1)
            torch.testing.assert_close(surprise[:, COL["catalogue_rank"]], above)
            previous = clicks[:, max(0, t - window) : t]
            if t == 0:
                expected = torch.zeros(3, dtype=torch.float64)
            else:
                mean = table[previous].mean(dim=1)
                expected = 1.0 - F.cosine_similarity(table[items], mean, dim=-1)
            torch.testing.assert_close(surprise[:, COL["drift"]], expected)
            if int(state.pos[0]) == 0:  # at a mini-batch boundary the fast weights are W
                torch.testing.assert_close(
                    surprise[:, COL["inner_loss"]], reference_inner_loss(model, state, items)
                )
            state = new


def reference_inner_loss(model: TTT4Rec, state, items) -> torch.Tensor:
    """½‖LN(XK·W + b) − (XV − XK)‖² with the committed weights, user by user."""
    block = model.blocks[0]
    ttt = block.ttt
    x = block.seq_norm(model.item_embedding(items))[:, None]  # [B, 1, D]
    rope = ttt.rope.to(x.dtype)[:, state.pos, None, None]
    _, xk, xv, _ = ttt._qkv_lr(x, rope[0], rope[1])  # [B, H, 1, F]
    out = []
    for user in range(items.shape[0]):
        z = xk[user] @ state.weight[user, 0] + state.bias[user, 0][:, None]  # [H, 1, F]
        target = xv[user] - xk[user]
        eps = ttt.config.norm_eps
        out.append(inner_loss(z[None], target[None], ttt.ttt_norm_weight, ttt.ttt_norm_bias, eps))
    return torch.stack(out)


def test_a_history_model_reports_surprise_from_its_scores():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=NUM_ITEMS, hidden_size=16, max_len=10)).eval()
    runner = make_runner(model)
    past = np.array([3, 9, 4, 17, 22, 5])
    _, row = runner.step_with_surprise(None, past, 11)
    scores = runner.score_items(None, past, np.arange(NUM_ITEMS + 1))[1:]
    assert row[COL["logit"]] == pytest.approx(scores[10])
    assert row[COL["nll"]] == pytest.approx(np.log(np.exp(scores).sum()) - scores[10])
    assert row[COL["catalogue_rank"]] == pytest.approx(np.mean(scores > scores[10]))
    assert 0.0 < row[COL["drift"]] <= 2.0 and row[COL["inner_loss"]] == 0.0
    _, first = runner.step_with_surprise(None, np.zeros(0, np.int64), 11)
    assert first[COL["drift"]] == 0.0  # nothing to drift from


def test_list_columns_rank_and_place_the_click_in_the_held_list():
    items = np.array([[5, 7, 9, 0], [5, 7, 9, 2]])
    logits = np.array([[1.0, 3.0, 2.0, 9.0], [1.0, 3.0, 2.0, 0.5]])
    valid = items != 0
    part = list_columns([9, 4], [2.5, 0.0], items, logits, valid)
    np.testing.assert_allclose(part[0], [1 / 3, 2 / 4])  # only 7 above; 9 is slot 2 of 4
    np.testing.assert_allclose(part[1], [4 / 4, NO_LIST["list_position"]])  # not in the list


def test_measures_read_the_last_click_or_the_mean_since_the_fetch():
    rows = np.zeros((3, len(CLICK_COLUMNS)))
    rows[:, CLICK_COLUMNS.index("drift")] = [0.2, 0.4, 0.9]
    obs = PolicyObservation(2, 3, np.array([1, 2]), np.zeros(2), np.zeros(2), surprise=rows)
    assert SurpriseMeasure("drift").observe(obs) == pytest.approx(0.9)
    assert SurpriseMeasure("drift_mean").observe(obs) == pytest.approx(0.5)
    assert ConsistencyPolicy(measure="drift_mean", threshold=0.45).decide(obs)
    assert not ConsistencyPolicy(measure="drift_mean", threshold=0.55).decide(obs)
    assert ConsistencyPolicy(measure="drift").label.startswith("surprise[drift]")
    assert set(SURPRISE_MEASURES) >= {"surprisal", "drift_mean", "inner_loss_mean"}
    with pytest.raises(ValueError, match="unknown request measure 'drift_max'"):
        build_request_measure("drift_max")
    with pytest.raises(ValueError, match="unknown surprise measure"):
        SurpriseMeasure("kendall")


def test_a_session_keeps_one_row_per_click_and_shows_those_since_the_fetch():
    model = make_model(4).float()
    session = DeviceSession(make_runner(model), history=[1, 2, 3])
    assert session.surprise_rows().shape == (1, len(CLICK_COLUMNS))  # no list: the last click
    assert session.surprise_rows()[0, -2:].tolist() == [
        NO_LIST[c] for c in ("list_rank", "list_position")
    ]
    session.update_candidates(CandidateList(np.array([7, 8, 9]), np.array([-1.0, -2.0, -3.0])))
    assert len(session.surprise_rows()) == 1  # nothing clicked since the fetch
    for click in (8, 30):
        session.observe(click)
    rows = session.observation().surprise
    assert rows.shape == (2, len(CLICK_COLUMNS))
    position = CLICK_COLUMNS.index("list_position")
    assert rows[:, position].tolist() == [1 / 3, 1.0]  # 8 is slot 1 of 3; 30 is not listed
