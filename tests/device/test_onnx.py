"""ONNX export of TTT4Rec's step and scorer, run under onnxruntime, against the torch model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from device.onnx_runtime import OnnxState, OnnxStepModel
from device.policies import NeverPolicy
from device.session import DeviceSession, StatefulRunner
from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig, TTT4RecState
from seqrec.onnx_export import FORBIDDEN_OPS, export_scorer, export_step
from seqrec.runners import make_runner
from shared.candidates import CandidateList

torch.set_num_threads(1)

NUM_ITEMS = 80


@pytest.fixture(scope="module")
def model() -> TTT4Rec:
    torch.manual_seed(0)
    config = TTT4RecConfig(
        num_items=NUM_ITEMS,
        hidden_size=32,
        num_heads=2,
        num_layers=2,
        mini_batch_size=16,
        intermediate_size=64,
        initializer_range=0.1,
    )
    model = TTT4Rec(config).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.ttt.token_offset.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """Export once per module, from a model in training mode and float64 (both must survive)."""
    folder = tmp_path_factory.mktemp("onnx")
    model.double().train()
    paths = export_step(model, folder / "step.onnx"), export_scorer(model, folder / "scorer.onnx")
    untouched = model.training and model.item_embedding.weight.dtype == torch.float64
    model.float().eval()  # float32 -> float64 -> float32 is exact
    return paths, untouched


@pytest.fixture(scope="module")
def paths(exported):
    return exported[0]


@pytest.fixture(scope="module")
def runner(paths) -> OnnxStepModel:
    return OnnxStepModel(*paths)


def close(got, want, atol: float, rtol: float = 0.0, err_msg: str = "") -> None:
    """numpy (the device runtime) against torch (the trained model)."""
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=err_msg)


def clicks(batch: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=generator)
    history[torch.rand(history.shape, generator=generator) < 0.15] = 0  # idle users
    return history


def test_graphs_are_loop_free_with_opset_17_or_more(paths):
    for path in paths:
        graph = onnx.load(str(path))
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert not {node.op_type for node in graph.graph.node} & FORBIDDEN_OPS
        assert not graph.functions  # everything inlined in the main graph


def test_stream_of_40_clicks_matches_torch(model, runner):
    history = clicks(3, 40, seed=1)
    candidates = torch.randint(
        1, NUM_ITEMS + 1, (3, 50), generator=torch.Generator().manual_seed(2)
    )
    torch_state, onnx_state = model.init_state(3), runner.init_state(3)
    with torch.no_grad():
        for t in range(history.shape[1]):
            torch_state, torch_features = model.step(torch_state, history[:, t])
            onnx_state, onnx_features = runner.step(onnx_state, history[:, t])
            close(onnx_features, torch_features, atol=1e-4)
            want = model.score_features(torch_features, candidates)
            got = runner.score_features(onnx_features, candidates)
            close(got, want, atol=1e-4)
    commits = (history != 0).sum(1) // 16
    assert commits.min() >= 1  # the stream crossed mini-batch boundaries mid-way
    for name, a, b in zip(TTT4RecState.names(), onnx_state.tensors(), torch_state.tensors()):
        close(a, b, atol=1e-4, err_msg=name)


def test_dynamic_batch_and_candidate_count(model, runner):
    history = clicks(1, 5, seed=3)
    history[0, -1] = 7  # the last click is valid, so F_s is not the initial zeros
    with torch.no_grad():
        want = model.encode(history)
        for count in (1, 7, 50):
            items = torch.arange(1, count + 1).unsqueeze(0)
            got = runner.score_features(runner.encode(history), items)
            assert got.shape == (1, count)
            close(got, model.score_features(want, items), atol=1e-4)


def test_states_move_between_torch_and_onnx(model, runner):
    history = clicks(2, 30, seed=4)
    with torch.no_grad():
        state, _ = model.encode_with_state(history[:, :19])
        state = OnnxState.from_bytes(state.to_bytes())  # stored by the trainer, read on a device
        for t in range(19, 30):
            state, features = runner.step(state, history[:, t])
        close(features, model.encode(history), atol=1e-4)


def test_init_state_from_metadata(model, runner):
    want = model.init_state(4)
    got = runner.init_state(4)
    for a, b in zip(got.tensors(), want.tensors()):
        assert np.array_equal(a, b.detach().numpy())
    assert runner.config["num_items"] == NUM_ITEMS


def test_export_leaves_model_untouched(exported):
    assert exported[1]


def test_step_graph_reports_the_surprise_torch_does(model, runner):
    history = clicks(3, 25, seed=11)
    torch_state, onnx_state = model.init_state(3), runner.init_state(3)
    table = model.all_item_features()
    for t in range(history.shape[1]):
        with torch.no_grad():
            torch_state, _, expected = model.step_with_surprise(torch_state, history[:, t], table)
        onnx_state, _, surprise = runner.step_with_surprise(onnx_state, history[:, t])
        close(surprise, expected.float(), rtol=1e-3, atol=2e-4)
    assert (surprise[:, 3] > 0).all() and (surprise[:, 4] > 0).all()  # drift, inner loss


def test_device_step_benchmark_runs_every_method(tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "device_step.py"
    spec = importlib.util.spec_from_file_location("device_step", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "device_step", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "step.json"
    argv = ["--lengths", "4", "8", "--num-items", "30", "--hidden", "16", "--candidates", "5"]
    bench.main([*argv, "--iters", "5", "--warmup", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    methods = {row["method"] for row in result["rows"]}
    assert methods == {
        "bundle-onnx",
        "bundle-onnx-catalogue",
        "onnx-two-runs",
        "ttt4rec-torch",
        "ttt4rec-recompute",
        "sasrec-recompute",
    }
    assert all(row["p50_ms"] > 0 for row in result["rows"])
    assert "onnx_p50_within_budget" in result["checks"]


def test_onnx_runtime_plugs_into_the_same_session(model, runner):
    """A device session on the ONNX graphs shows what one on the torch model shows."""
    items = np.arange(1, 21, dtype=np.int64)
    listed = CandidateList(items, -np.arange(20, dtype=np.float32), "v1")
    sessions = [
        DeviceSession(adapter, NeverPolicy(), candidates=listed)
        for adapter in (make_runner(model), StatefulRunner(runner))
    ]
    for click in [22, 35, 23, 40, 21, 30, 2, 57]:
        for session in sessions:
            session.observe(click)
    torch_session, onnx_session = sessions
    np.testing.assert_allclose(onnx_session.srm_logits(), torch_session.srm_logits(), atol=1e-4)
    assert onnx_session.recommend(k=5).tolist() == torch_session.recommend(k=5).tolist()
    np.testing.assert_allclose(
        onnx_session.surprise_rows(), torch_session.surprise_rows(), rtol=1e-4, atol=1e-4
    )
