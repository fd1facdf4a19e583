"""The device bundle: written once, verified on load, refused in one line when anything is off,
and run on a device process that cannot import torch, against a real gRPC server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from device.bundle import BundleError, BundleSettings, load_bundle
from device.driver import run_stream
from device.fusion import AgeAlphaFusion, RankSigmoidFusion
from device.policies import BudgetPolicy, FeatureConfig, LearnedPolicy, LogisticRegression
from device.policies.spec import policy_to_dict
from device.policies.surprise import CLICK_COLUMNS
from device.session import DeviceSession, SessionConfig
from seqrec.runners import make_runner
from shared.candidates import CandidateList
from shared.device_format import CATALOGUE_COLUMNS
from shared.manifest import MANIFEST_NAME, catalogue_digest
from simulations.bundle_export import export_device_bundle

ROOT = Path(__file__).resolve().parents[2]
NUM_ITEMS = 120  # the served tiny generator's catalogue
ITEM_IDS = [""] + [f"item-{i}" for i in range(1, NUM_ITEMS + 1)]
# An age-aware fusion: the bundle must carry its per-age weights and the device apply them.
AGE_FUSION = AgeAlphaFusion(alphas=(0.9, 0.7, 0.5, 0.3, 0.1))


def learned_policy() -> BudgetPolicy:
    """A fitted learned policy (every surprise column a feature), capped by a budget."""
    features = FeatureConfig(recent_k=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(features.names)))
    model = LogisticRegression().fit(x, (x[:, 0] + x[:, -1] > 0).astype(float))
    inner = LearnedPolicy(model=model, feature_config=features, threshold=0.4, seed=5)
    return BudgetPolicy(inner=inner, max_requests=2, window=4, seed=5)


@pytest.fixture(scope="module")
def srm(tiny_ttt4rec):
    return tiny_ttt4rec(NUM_ITEMS, initializer_range=0.2)


@pytest.fixture(scope="module")
def bundle_dir(srm, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "device"
    export_device_bundle(
        folder, srm, learned_policy(), AGE_FUSION, BundleSettings(5, 8, 10),
        ITEM_IDS, generator_version="gen-v1", notes={"target_rate": 0.2},
    )  # fmt: skip
    return folder


def copy_of(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def test_bundle_holds_the_policy_fusion_and_settings_it_was_given(bundle_dir):
    bundle = load_bundle(bundle_dir, NUM_ITEMS, catalogue_digest(ITEM_IDS[1:]))
    assert policy_to_dict(bundle.policy) == policy_to_dict(learned_policy())
    assert bundle.fusion == AGE_FUSION
    assert bundle.settings == BundleSettings(5, 8, 10)
    assert bundle.num_items == NUM_ITEMS
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(
        [MANIFEST_NAME, "device.json", "scorer.onnx", "step.onnx"]
    )
    assert bundle.manifest["models"]["generator"] == "gen-v1"
    assert "learned(0.4)+budget(2/4)" in "\n".join(bundle.describe())


CLICKS = (12, 5, 60, 2, 33, 8, 71)


def _run_side_by_side(bundle, model, history: list[int]) -> tuple[DeviceSession, DeviceSession]:
    """The bundle's session and a torch device session of `model`, fed the same clicks,
    checked to decide, score and show the same at every step."""
    listed = CandidateList(np.arange(1, 11), -np.arange(10, dtype=np.float32), "v1")
    from_bundle = bundle.session(11, history, listed)
    by_hand = DeviceSession(make_runner(model), learned_policy().spawn(11),
                            AGE_FUSION, SessionConfig(5, 8), history, listed)  # fmt: skip
    for click in CLICKS:
        assert from_bundle.needs_refresh() == by_hand.needs_refresh()
        np.testing.assert_allclose(from_bundle.srm_logits(), by_hand.srm_logits(), atol=1e-4)
        assert from_bundle.recommend().tolist() == by_hand.recommend().tolist()
        from_bundle.observe(click)
        by_hand.observe(click)
    return from_bundle, by_hand


def test_a_bundle_session_shows_what_the_torch_device_shows(bundle_dir, srm):
    bundle = load_bundle(bundle_dir)
    from_bundle, by_hand = _run_side_by_side(bundle, srm, [7, 44, 3, 90])
    # the policy reads no catalogue-wide column, so the bundle's step skips them (NaN)
    catalogue = [CLICK_COLUMNS.index(c) for c in CATALOGUE_COLUMNS]
    rest = [i for i in range(len(CLICK_COLUMNS)) if i not in catalogue]
    assert np.isnan(from_bundle.surprise_rows()[:, catalogue]).all()
    assert not bundle.model.catalogue_surprise
    np.testing.assert_allclose(
        from_bundle.surprise_rows()[:, rest], by_hand.surprise_rows()[:, rest], rtol=1e-4, atol=1e-4
    )


def test_a_gru4rec_bundle_steps_as_the_torch_gru4rec_does(tmp_path):
    """One contract for every stateful SRM: a GRU4Rec bundle runs where a TTT4Rec one does."""
    from seqrec.models import build_model

    torch.manual_seed(0)
    gru = build_model("gru4rec", num_items=NUM_ITEMS, hidden_size=16, max_len=4).eval()
    with torch.no_grad():  # weights far from their init, so clicks move the scores
        gru.item_embedding.weight.normal_(0.0, 0.5)
    export_device_bundle(tmp_path / "gru", gru, learned_policy(), AGE_FUSION,
                         BundleSettings(5, 8, 10), ITEM_IDS)  # fmt: skip
    bundle = load_bundle(tmp_path / "gru", NUM_ITEMS, catalogue_digest(ITEM_IDS[1:]))
    assert bundle.model.model_name == "gru4rec"
    history = [7, 44, 3, 90, 15, 16]  # longer than the training window: the state keeps all
    from_bundle, _ = _run_side_by_side(bundle, gru, history)
    with torch.no_grad():  # the state read every click, not the last max_len = 4
        window = gru.score(torch.tensor([history + list(CLICKS)]),
                           torch.arange(1, 11)[None])[0].numpy()  # fmt: skip
    assert not np.allclose(from_bundle.srm_logits(), window, atol=1e-3)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.joinpath("step.onnx").write_bytes(b"not a graph"), "step.onnx does not match"),
        (lambda f: f.joinpath("scorer.onnx").unlink(), "scorer.onnx is missing"),
        (lambda f: f.joinpath("notes.txt").write_text("hi"), "notes.txt is not in the manifest"),
        (lambda f: f.joinpath(MANIFEST_NAME).write_text("{"), "not valid JSON"),
        (lambda f: f.joinpath(MANIFEST_NAME).unlink(), "no manifest.json"),
        (lambda f: _edit_manifest(f, format_version=99), "format version 99"),
        (lambda f: _edit_manifest(f, kind="generator"), "not a 'device-bundle' one"),
    ],
)
def test_a_damaged_bundle_is_refused_in_one_line(bundle_dir, tmp_path, damage, message):
    folder = copy_of(bundle_dir, tmp_path)
    damage(folder)
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(folder)
    assert "\n" not in str(caught.value)


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_bundle_for_another_catalogue_is_refused(bundle_dir):
    with pytest.raises(BundleError, match="catalogue of 120 items, this one has 121"):
        load_bundle(bundle_dir, num_items=121)
    with pytest.raises(BundleError, match="made for another catalogue"):
        load_bundle(bundle_dir, NUM_ITEMS, catalogue_digest(reversed(ITEM_IDS[1:])))


def test_inspect_device_cli(bundle_dir, tmp_path, capsys):
    assert main(["inspect-device", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "policy: learned(0.4)+budget(2/4)" in out and "alphas=(0.9, 0.7, 0.5, 0.3, 0.1)" in out
    folder = copy_of(bundle_dir, tmp_path)
    (folder / "device.json").write_text("{}")
    assert main(["inspect-device", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "device.json does not match its SHA-256" in err


def test_export_device_cli_writes_a_bundle_devices_can_load(tmp_path, srm, capsys):
    from seqrec.checkpoint import save_srm

    save_srm(srm, tmp_path / "srm")
    out = tmp_path / "device"
    argv = ["export-device", "--srm", str(tmp_path / "srm"), "--out", str(out),
            "--policy", "surprise:drift_mean:0.25", "--alpha", "0.8"]  # fmt: skip
    assert main(argv) == 0
    bundle = load_bundle(out)
    assert bundle.policy.label == "surprise[drift_mean](0.25)"
    assert bundle.fusion == RankSigmoidFusion(alpha=0.8)
    assert main([*argv[:-2], "--policy", "sometimes"]) == 2
    assert "bad policy spec 'sometimes'" in capsys.readouterr().err
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("mine")
    assert main([*argv[:3], "--out", str(tmp_path / "elsewhere")]) == 2
    assert (tmp_path / "elsewhere" / "keep.txt").read_text() == "mine"  # nothing overwritten


DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    for name in ("torch", "transformers", "peft"):
        sys.modules[name] = None  # `import torch` now raises ImportError
    from device.bundle import load_bundle
    from device.client import CandidateClient, ClientConfig
    from device.driver import run_stream

    bundle_dir, target, history, clicks = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:])
    bundle = load_bundle(bundle_dir)
    client = CandidateClient(ClientConfig(target=target, timeout_s=10.0, total_timeout_s=20.0))
    session = bundle.session(7, history)
    first = client.fetch(session.history[-bundle.settings.request_history :],
                         n=bundle.settings.candidates)
    session.update_candidates(first.candidates)
    fetch = lambda h, exclude=(): client.fetch(h, n=bundle.settings.candidates, exclude=exclude)
    record = run_stream(session, fetch, clicks, k=bundle.settings.candidates)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")
                    and sys.modules[m] is not None)
    print(json.dumps({"ranks": [None if r == float("inf") else int(r) for r in record.ranks],
                      "requested": record.requested.tolist(), "failed": record.failed.tolist(),
                      "history": session.history.tolist(), "loaded": loaded}))
    """
)


def test_a_device_without_torch_runs_the_bundle_against_a_real_server(
    bundle_dir, srm, served_generator
):
    from cloud.server import ServerConfig, create_server
    from device.client import CandidateClient, ClientConfig

    history, clicks = [4, 17, 29, 61, 8, 100], [33, 2, 75, 19, 40, 5, 88, 12]
    server, port = create_server(served_generator, "127.0.0.1:0", ServerConfig(grace_s=0.5))
    try:
        target = f"127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", DEVICE_SCRIPT, str(bundle_dir), target,
             json.dumps(history), json.dumps(clicks)],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        device = json.loads(done.stdout)
        # the same device in this process, on the torch model, against the same server
        client = CandidateClient(ClientConfig(target=target, timeout_s=10.0, total_timeout_s=20.0))
        session = DeviceSession(make_runner(srm), learned_policy().spawn(7),
                                AGE_FUSION, SessionConfig(5, 8), history)  # fmt: skip
        session.update_candidates(client.fetch(session.history[-8:], n=10).candidates)
        with torch.no_grad():
            record = run_stream(
                session, lambda h, exclude=(): client.fetch(h, n=10, exclude=exclude), clicks, k=10
            )
    finally:
        server.shutdown(grace_s=0)
    assert device["loaded"] == []
    assert device["history"] == history + clicks  # no click lost
    assert not any(device["failed"]) and any(device["requested"])
    assert device["requested"] == record.requested.tolist()
    expected = [None if r == float("inf") else int(r) for r in record.ranks]
    assert device["ranks"] == expected


def test_the_step_graph_computes_only_the_columns_the_policy_reads(bundle_dir, tmp_path):
    from device.policies.spec import parse_policy, surprise_columns
    from shared.manifest import write_manifest

    assert surprise_columns(parse_policy("surprise:surprisal_mean:1")) == {"nll"}
    assert surprise_columns(parse_policy("periodic:3")) == set()
    assert surprise_columns(learned_policy()) == {"drift", "inner_loss", "list_position"}
    # a bundle whose policy reads a column its graph leaves out is refused
    folder = copy_of(bundle_dir, tmp_path)
    device = json.loads((folder / "device.json").read_text())
    device["policy"] = policy_to_dict(parse_policy("surprise:catalogue_rank:0.5"))
    (folder / "device.json").write_text(json.dumps(device))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    extra = {k: manifest[k] for k in ("catalogue", "models", "notes")}
    write_manifest(folder, manifest["kind"], manifest["format_version"], extra)
    with pytest.raises(BundleError, match="reads catalogue_rank, which its step graph"):
        load_bundle(folder)
