"""Live device fleets over a real loopback gRPC server: live == replay, faults, CLI, backends."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from cli.main import main as cli_main
from cloud.base import GeneratorBase
from cloud.config import BackboneConfig, GeneratorConfig
from cloud.generator import CandidateGenerator
from cloud.server import ServerConfig, create_server
from seqrec.checkpoint import load_srm, save_srm
from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream
from simulations.fleet import (
    FaultPlan,
    FleetBackendError,
    FleetConfig,
    fleet_pool,
    parse_policy,
    run_fleet,
    run_fleet_with_restart,
    write_fleet_json,
)
from simulations.replay import ReplayConfig, ReplayStream, prepare_replay, replay, stream_from_split

WINDOW = 10  # T: stream steps per user
USERS = 8  # devices in a fleet: small, the machine is shared
N = 20  # candidates per list (the tiny catalogue has 120 items)
L = 12  # clicks sent with a request: shorter than the histories, so truncation is exercised
POLICIES = ("always", "random:0.3", "never", "consistency:rank_diff:4", "periodic:3")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    dataset = make_synthetic(num_users=16, num_items=120, min_length=26, max_length=36, seed=5)
    return split_stream(dataset, test_window=WINDOW)


@pytest.fixture(scope="module")
def stream(split) -> ReplayStream:
    full = stream_from_split(split)
    rows = range(USERS)
    return ReplayStream(
        "test",
        full.users[:USERS],
        tuple(full.sequences[r] for r in rows),
        full.starts[:USERS],
        WINDOW,
    )


@pytest.fixture(scope="module")
def generator(split, tiny_generator) -> GeneratorBase:
    return tiny_generator(split, N)


@pytest.fixture(scope="module")
def srm_dir(split, tiny_ttt4rec, tmp_path_factory):
    """A tiny TTT4Rec, spread enough that its order differs from the LLM's, saved to disk."""
    return str(save_srm(tiny_ttt4rec(split.num_items), tmp_path_factory.mktemp("srm")))


@pytest.fixture(scope="module")
def server(generator):
    server, port = create_server(generator, "127.0.0.1:0", ServerConfig(default_n=N, grace_s=1.0))
    yield f"127.0.0.1:{port}"
    server.shutdown(grace_s=0)


@pytest.fixture(scope="module")
def base_config(server, srm_dir) -> FleetConfig:
    # generous deadlines: a busy shared machine must not turn into failed requests here
    return FleetConfig(
        target=server,
        srm_dir=srm_dir,
        workers=2,
        n=N,
        request_history=L,
        deadline_ms=5000,
        total_timeout_ms=10000,
    )


@pytest.fixture(scope="module")
def pool(base_config):
    with fleet_pool(base_config) as executor:  # two spawned device processes, kept warm
        yield executor


@pytest.fixture(scope="module")
def replay_data(stream, generator, srm_dir):
    """The replay engine's lists and SRM logits of the same stream, from the same models."""
    config = ReplayConfig(n=N, request_history=L)
    return prepare_replay(stream, generator, load_srm(srm_dir), config, full_ranking=False)


def test_live_fleet_equals_replay(stream, base_config, pool, replay_data):
    for spec in POLICIES:
        config = dataclasses.replace(base_config, policy=spec)
        live = run_fleet(stream, config, pool)
        summary = live.summary()
        assert summary["requests_failed"] == 0 and summary["initial_failed"] == 0
        assert summary["steps"] == summary["steps_observed"] == USERS * WINDOW
        expected = replay(replay_data, parse_policy(spec, config.seed))
        got = live.replay_result()
        np.testing.assert_array_equal(got.users, expected.users)
        np.testing.assert_array_equal(got.requested, expected.requested, err_msg=spec)
        np.testing.assert_array_equal(got.lists_used, expected.lists_used, err_msg=spec)
        np.testing.assert_array_equal(got.ranks, expected.ranks, err_msg=spec)
        assert summary["NDCG@10"] == pytest.approx(expected.summary()["NDCG@10"])
        assert summary["requests"] == int(expected.requested.sum())
        assert len(live.requests) == summary["requests"] + USERS  # + one initial list each
    assert got.ranks.shape == (USERS, WINDOW)


def test_live_bundle_with_a_learned_policy_equals_replay(
    stream, base_config, replay_data, srm_dir, tmp_path
):
    """The experiment's kind of choice, shipped: a learned policy reading every surprise column,
    under the per-device rate controller, with a tuned fusion, written to a bundle and run by
    live devices on onnxruntime over gRPC, gives the replay's requests and ranks (the replay
    runs the torch SRM)."""
    from device.bundle import BundleSettings, load_bundle
    from device.fusion import RankSigmoidFusion
    from device.policies import FeatureConfig, LearnedPolicy, RateControlledPolicy
    from device.policies.control import quantile_level, score_quantiles
    from device.policies.surprise import SURPRISE_MEASURES
    from simulations.bundle_export import export_device_bundle
    from simulations.request_rate import fit_learned, reachable
    from simulations.request_rate.calibration import calibrate_controlled

    fusion = RankSigmoidFusion(alpha=0.7)
    features = FeatureConfig(surprise=SURPRISE_MEASURES)
    model, table, _ = fit_learned(replay_data, fusion, features)
    quantiles = score_quantiles(table[:, reachable(WINDOW)])
    level, _ = calibrate_controlled(quantile_level(table, quantiles), 0.3, gain=0.3)
    policy = RateControlledPolicy(
        LearnedPolicy(model, features), target_rate=0.3, quantiles=quantiles, level=level,
        gain=0.3, seed=4,
    )  # fmt: skip
    settings = BundleSettings(top_k=N, request_history=L, candidates=N)
    folder = tmp_path / "device"
    export_device_bundle(folder, load_srm(srm_dir), policy, fusion, settings)
    config = dataclasses.replace(base_config, srm_dir="", bundle_dir=str(folder), backend="thread")
    live = run_fleet(stream, config)
    assert live.summary()["requests_failed"] == 0
    expected = replay(replay_data, load_bundle(folder).policy, fusion)
    got = live.replay_result()
    assert 0.1 < expected.requested.mean() < 0.6  # the policy does choose
    np.testing.assert_array_equal(got.requested, expected.requested)
    np.testing.assert_array_equal(got.lists_used, expected.lists_used)
    np.testing.assert_array_equal(got.ranks, expected.ranks)


def test_never_and_always_differ_live(stream, base_config, pool):
    """Guards the identity test: the policies must actually produce different lists."""
    never = run_fleet(stream, dataclasses.replace(base_config, policy="never"), pool)
    always = run_fleet(stream, dataclasses.replace(base_config, policy="always"), pool)
    assert never.summary()["request_rate"] == 0.0 and always.summary()["request_rate"] == 1.0
    assert not np.array_equal(never.replay_result().ranks, always.replay_result().ranks)


def test_server_restart_loses_no_click(stream, generator, srm_dir, tmp_path):
    """Stop the server mid-fleet, restart it on the same port: devices ride it out."""
    config = FleetConfig(
        srm_dir=srm_dir,
        policy="always",
        workers=2,
        backend="thread",  # cheap to start; the process backend runs the same run_device
        n=N,
        request_history=L,
        deadline_ms=2000,
        total_timeout_ms=3000,
        reconnect_backoff_s=0.2,
        step_delay_ms=40,  # the stream must outlast the outage
    )
    plan = FaultPlan(after_requests=USERS // 2 + 4, down_s=0.6)
    result = run_fleet_with_restart(generator, stream, config, plan)
    summary = result.summary()
    assert result.events["restarted"], "the fleet finished before the fault was injected"
    assert summary["steps_observed"] == summary["steps"] == USERS * WINDOW  # no click lost
    assert summary["requests_failed"] >= 1
    assert summary["requests"] == summary["requests_ok"] + summary["requests_failed"]
    restarted = result.events["restarted_at"]
    assert any(r.ok and r.wall_time > restarted for r in result.requests)  # requests resumed
    failed_at = [r.wall_time for r in result.requests if not r.ok]
    assert min(failed_at) >= result.events["stopped_at"]
    # every failure left the device on the list it held before the step
    for device in result.devices:
        for t in np.flatnonzero(device.failed):
            assert device.lists_used[t] == (device.lists_used[t - 1] if t else 0)
    payload = json.loads(write_fleet_json(result, tmp_path / "fleet.json").read_text())
    assert payload["summary"]["requests_failed"] == summary["requests_failed"]
    assert payload["events"]["restarted"] is True and "token" not in payload["config"]


def test_policy_specs_and_config_errors(srm_dir):
    assert parse_policy("random:0.2").p == 0.2
    assert parse_policy("periodic:5").m == 5
    assert parse_policy("consistency:0.5").threshold == 0.5
    assert parse_policy("consistency:kendall:0.1").measure.name == "kendall"
    surprise = parse_policy("surprise:drift_mean:0.3")
    assert (surprise.measure.name, surprise.threshold) == ("drift_mean", 0.3)
    bad_specs = ("sometimes", "random", "random:x", "random:2", "periodic:0", "consistency:a:b")
    for bad in (*bad_specs, "surprise:kendall:0.3", "surprise:0.3"):
        with pytest.raises(ValueError, match="bad policy spec"):
            parse_policy(bad)
    with pytest.raises(ValueError, match="backend"):
        FleetConfig(srm_dir=srm_dir, backend="mpi")
    with pytest.raises(ValueError, match="workers"):
        FleetConfig(srm_dir=srm_dir, workers=0)
    with pytest.raises(ValueError, match="srm_dir"):
        FleetConfig()


def test_ray_backend_missing_names_the_extra(stream, srm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    config = FleetConfig(srm_dir=srm_dir, backend="ray")
    with pytest.raises(FleetBackendError, match=r"pip install 'lsc4rec\[ray\]'"):
        run_fleet(stream, config)


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    """Untrained tiny models on the CLI's synthetic catalogue (1000 items): valid lists suffice."""
    dataset = make_synthetic(num_users=12, seed=0)  # what --dataset synthetic loads
    split = split_stream(dataset, test_window=WINDOW)
    folder = tmp_path_factory.mktemp("cli_models")
    backbone = BackboneConfig(d_model=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_ff=32)
    config = GeneratorConfig(backbone=backbone, max_history=8, num_beams=N)
    gen = CandidateGenerator.create(config, split.train, dataset.num_items, seed=0)
    gen.save_pretrained(folder / "llm")
    torch.manual_seed(0)
    srm = TTT4Rec(TTT4RecConfig(num_items=dataset.num_items, hidden_size=16, num_heads=2))
    save_srm(srm.eval(), folder / "srm")
    return folder


def test_cli_fault_drill_writes_json(cli_models, tmp_path, capsys):
    argv = ["devices", "--llm", str(cli_models / "llm"), "--srm", str(cli_models / "srm")]
    argv += ["--dataset", "synthetic", "--synthetic-users", "12", "--users", "6"]
    argv += ["--workers", "2", "--backend", "thread", "--policy", "always", "-n", str(N)]
    argv += ["--deadline-ms", "2000", "--step-delay-ms", "40", "--fault", "6:0.5"]
    argv += ["--out", str(tmp_path)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "| workers | users | steps |" in out and "restarted" in out
    payload = json.loads((tmp_path / "fleet.json").read_text())
    summary = payload["summary"]
    assert summary["users"] == 6 and summary["steps_observed"] == 6 * WINDOW
    assert summary["requests_failed"] >= 1 and payload["events"]["restarted"] is True


def test_cli_reports_failures_by_status_and_fails_when_no_request_succeeds(
    cli_models, tmp_path, capsys, monkeypatch
):
    """With the wrong token every request is refused: the devices keep recommending, the
    summary says why requests failed, and the command exits non-zero."""
    token = tmp_path / "token"
    token.write_text("right\n")
    base = ["devices", "--llm", str(cli_models / "llm"), "--srm", str(cli_models / "srm")]
    base += ["--dataset", "synthetic", "--synthetic-users", "12", "--users", "3", "--workers", "1"]
    base += ["--backend", "thread", "--policy", "always", "-n", str(N), "--deadline-ms", "2000"]
    base += ["--out", str(tmp_path)]
    monkeypatch.setenv("LSC4REC_TOKEN", "right")
    assert cli_main(base) == 0  # the in-process server wants the same token
    capsys.readouterr()
    assert cli_main([*base, "--token", "wrong"]) == 2  # both given: refused at once
    assert "give the token once" in capsys.readouterr().err
    monkeypatch.delenv("LSC4REC_TOKEN")
    assert cli_main([*base, "--token-file", str(token)]) == 0
    capsys.readouterr()
    # A server wanting a token the devices do not send: every request is UNAUTHENTICATED.
    monkeypatch.setattr("cli.devices.resolve_token", lambda args: "wrong")
    import cli.devices

    real = cli.devices.ServerConfig
    monkeypatch.setattr(
        cli.devices, "ServerConfig", lambda **kw: real(**{**kw, "auth_token": "right"})
    )
    assert cli_main(base) == 2
    captured = capsys.readouterr()
    payload = json.loads((tmp_path / "fleet.json").read_text())
    failed = len(payload["requests"])  # every attempt, the 3 initial fetches included
    assert failed > 3 and not any(r["ok"] for r in payload["requests"])
    line = f"failed requests by status: UNAUTHENTICATED {failed}; initial fetches failed: 3 of 3"
    assert line in captured.out
    assert f"no request reached the cloud (UNAUTHENTICATED {failed})" in captured.err
    assert payload["summary"]["steps_observed"] == 3 * WINDOW  # no click lost
    ranks = np.asarray([d["ranks"] for d in payload["devices"]], dtype=float)
    assert np.isfinite(ranks).any()  # the devices showed their SRM's ranking, not nothing


def test_tokens_from_the_environment_are_stripped_and_may_start_with_a_dash(
    cli_models, tmp_path, capsys, monkeypatch
):
    """A token with a trailing newline in LSC4REC_TOKEN, and a token starting with "-" given
    as `--token TOKEN`: the devices reach the in-process server, which wants that token."""
    base = ["devices", "--llm", str(cli_models / "llm"), "--srm", str(cli_models / "srm")]
    base += ["--dataset", "synthetic", "--synthetic-users", "12", "--users", "2", "--workers", "1"]
    base += ["--backend", "thread", "--policy", "always", "-n", str(N), "--deadline-ms", "2000"]
    base += ["--out", str(tmp_path)]
    monkeypatch.setenv("LSC4REC_TOKEN", "s3cret\n")
    assert cli_main(base) == 0
    payload = json.loads((tmp_path / "fleet.json").read_text())
    assert payload["requests"] and all(r["ok"] for r in payload["requests"])
    monkeypatch.setenv("LSC4REC_TOKEN", " \n")
    assert cli_main(base) == 2
    assert "LSC4REC_TOKEN is set but empty" in capsys.readouterr().err
    monkeypatch.delenv("LSC4REC_TOKEN")
    assert cli_main([*base, "--token", "-Xk9_token"]) == 0
    payload = json.loads((tmp_path / "fleet.json").read_text())
    assert payload["requests"] and all(r["ok"] for r in payload["requests"])


def test_devices_token_option_warns_that_it_is_visible(capsys):
    from argparse import Namespace

    from cli.devices import resolve_token

    args = Namespace(token="s3cret", token_file=None)
    assert resolve_token(args) == "s3cret"
    assert "process list" in capsys.readouterr().err


def test_cli_errors_are_one_line(cli_models, capsys, monkeypatch):
    srm = str(cli_models / "srm")
    base = ["devices", "--dataset", "synthetic", "--synthetic-users", "12", "--srm", srm]
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the ray extra is not installed
    assert cli_main([*base, "--server", "127.0.0.1:1", "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'lsc4rec[ray]'" in err and len(err.strip().splitlines()) == 1
    assert cli_main([*base, "--server", "127.0.0.1:1", "--policy", "often"]) == 2
    assert "bad policy spec 'often'" in capsys.readouterr().err
    assert cli_main([*base, "--server", "127.0.0.1:1", "--fault", "3:1"]) == 2
    assert "--fault needs --llm" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["devices", "--users", "2", "--backend", "thread", "--policy", "always"],
        ["experiment", "request-rate", "--out", "{tmp}/rr"],
        [
            "train-srm",
            "--model",
            "ttt4rec",
            "--init",
            "{srm}",
            "--out",
            "{tmp}/srm2",
            "--epochs",
            "1",
        ],
    ],
    ids=["devices", "experiment", "train-srm"],
)
@pytest.mark.parametrize("tampered", ["llm", "srm"])
def test_a_tampered_model_folder_stops_each_command_in_one_line(
    cli_models, tmp_path, capsys, command, tampered
):
    """A model folder whose files differ from its manifest: one line naming the file, exit 2,
    for every command that loads models."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(cli_models, models)
    changed = "generator.json" if tampered == "llm" else "config.json"
    with (models / tampered / changed).open("a") as stream:
        stream.write(" ")
    argv = [part.format(tmp=tmp_path, srm=models / "srm") for part in command]
    if command[0] != "train-srm":
        argv += ["--llm", str(models / "llm"), "--srm", str(models / "srm")]
    elif tampered == "llm":
        argv[argv.index("--init") + 1] = str(cli_models / "srm")  # the SRM is fine here
        argv += ["--collaborative", "--llm", str(models / "llm")]
    argv += ["--dataset", "synthetic", "--synthetic-users", "12"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{tampered}: {changed} does not match its SHA-256 in the manifest" in err[0]
