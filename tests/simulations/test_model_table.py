"""The model-table script end to end on a small synthetic catalogue: runs, tables, merging."""

from __future__ import annotations

import json

import pytest

from simulations.model_table import main

TINY = ["--dataset", "synthetic", "--synthetic-users", "40", "--epochs", "1", "--hidden-size", "16"]
TINY += ["--patience", "0"]  # one epoch: the test only checks the plumbing


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory):
    """Two parallel-style jobs: seed 0 and seed 1 of GRU4Rec and TTT4Rec."""
    root = tmp_path_factory.mktemp("model_table")
    for seed in (0, 1):
        argv = TINY + ["--models", "gru4rec", "ttt4rec", "--seeds", str(seed)]
        argv += ["--option", "ttt4rec:mini_batch_size=4", "--out", str(root / f"part{seed}")]
        assert main(argv) == 0
    return root


def _payload(directory):
    return json.loads((directory / "model_table.json").read_text())


def test_each_part_records_runs_with_metrics_in_range(two_parts):
    payload = _payload(two_parts / "part0")
    assert [(r["model"], r["seed"]) for r in payload["runs"]] == [("gru4rec", 0), ("ttt4rec", 0)]
    for run in payload["runs"]:
        for protocol in ("sampled", "full"):
            for metric in ("NDCG@5", "NDCG@10", "HR@5", "HR@10"):
                assert 0.0 <= run[protocol][metric] <= 1.0
            # A hit in the top 5 is a hit in the top 10.
            assert run[protocol]["HR@5"] <= run[protocol]["HR@10"]
        assert run["settings"]["level"] == "sequence" and run["settings"]["loss"] == "bce"
        assert 1 == run["best_epoch"] == run["epochs_run"]
        # both carry a state: also scored as a device steps them through the whole history
        assert 0.0 <= run["full_whole_history"]["NDCG@10"] <= 1.0
    ttt = payload["runs"][1]["settings"]["options"]
    assert ttt == ["ttt4rec:mini_batch_size=4"]
    assert payload["runs"][0]["settings"]["options"] == []


def test_merge_gives_mean_and_std_over_the_parts(two_parts, tmp_path):
    out = tmp_path / "merged"
    parts = [str(two_parts / "part0"), str(two_parts / "part1")]
    assert main(["--merge", *parts, "--out", str(out)]) == 0
    summary = _payload(out)["summary"]
    for model in ("gru4rec", "ttt4rec"):
        values = [
            run["full"]["NDCG@10"]
            for seed in (0, 1)
            for run in _payload(two_parts / f"part{seed}")["runs"]
            if run["model"] == model
        ]
        mean, std = summary[model]["full"]["NDCG@10"]
        assert mean == pytest.approx(sum(values) / 2)
        assert std == pytest.approx(abs(values[0] - values[1]) / 2)
    table = (out / "model_table.md").read_text()
    assert "seeds 0, 1" in table and "| ttt4rec |" in table
    assert "| gru4rec | 1, 1 | 1, 1 |" in table  # best epoch and epochs run of each seed


def test_a_whole_history_mean_needs_every_run_of_the_model():
    from simulations.model_table import aggregate, markdown

    metrics = {"NDCG@5": 0.1, "NDCG@10": 0.2, "HR@5": 0.3, "HR@10": 0.4}
    runs = [
        {"model": "ttt4rec", "seed": 0, "sampled": metrics, "full": metrics},
        {"model": "ttt4rec", "seed": 1, "sampled": metrics, "full": metrics,
         "full_whole_history": metrics},
        {"model": "gru4rec", "seed": 0, "sampled": metrics, "full": metrics,
         "full_whole_history": {**metrics, "NDCG@10": 0.25}},
    ]  # fmt: skip
    summary = aggregate(runs)
    assert "full_whole_history" not in summary["ttt4rec"]  # one of two runs has it
    assert summary["gru4rec"]["full_whole_history"]["NDCG@10"] == (0.25, 0.0)
    text = markdown(summary, "synthetic", [0, 1])
    whole = text[text.index("whole history") :]
    assert "| gru4rec |" in whole and "| ttt4rec |" not in whole


def test_merge_refuses_runs_trained_differently(two_parts, tmp_path, capsys):
    other = tmp_path / "other"
    argv = TINY + ["--models", "gru4rec", "--seeds", "2", "--loss", "ce"]
    assert main(argv + ["--out", str(other)]) == 0
    capsys.readouterr()
    code = main(["--merge", str(two_parts / "part0"), str(other), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("model_table: error:") and "loss" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_merge_refuses_a_run_twice_and_a_missing_folder(two_parts, tmp_path, capsys):
    part = str(two_parts / "part0")
    assert main(["--merge", part, part, "--out", str(tmp_path / "a")]) != 0
    assert "appears twice" in capsys.readouterr().err
    assert main(["--merge", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) != 0
    assert "no model_table.json" in capsys.readouterr().err
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "model_table.json").write_text('{"rows": []}')
    assert main(["--merge", str(stray), "--out", str(tmp_path / "c")]) != 0
    assert "not a model-table output" in capsys.readouterr().err


def test_the_last_click_protocol_holds_out_each_users_final_clicks():
    from shared.datasets import load_dataset
    from shared.splits import leave_one_out, split_stream
    from simulations.model_table import held_out_sequences

    dataset = load_dataset("synthetic", num_users=30)
    last = leave_one_out(held_out_sequences(dataset, "last"))
    part = leave_one_out(held_out_sequences(dataset, "training-part"))
    stream = split_stream(dataset)
    for row, user in enumerate(last.users):
        sequence = dataset.sequences[user]
        assert last.test_target[row] == sequence[-1] and last.valid_target[row] == sequence[-2]
        assert list(last.test_history[row]) == list(sequence[:-1])
    for row, user in enumerate(part.users):  # the click before the stream's validation target
        assert part.test_target[row] == stream.train[user][-1]


def test_runs_of_the_two_protocols_do_not_merge(two_parts, tmp_path, capsys):
    argv = TINY + ["--models", "gru4rec", "--seeds", "2", "--protocol", "last"]
    assert main(argv + ["--out", str(tmp_path / "last")]) == 0
    assert _payload(tmp_path / "last")["runs"][0]["settings"]["protocol"] == "last"
    assert "leave-last-out" in (tmp_path / "last" / "model_table.md").read_text()
    merge = ["--merge", str(two_parts / "part0"), str(tmp_path / "last")]
    assert main(merge + ["--out", str(tmp_path / "merged")]) == 2
    assert "different protocol" in capsys.readouterr().err


def test_frontier_marks_the_points_no_other_beats_on_cost_and_accuracy():
    from simulations.frontier import Point, mark_frontier

    def point(model, ndcg, ms, protocol="last"):
        return Point(protocol, model, 50, [], 64, 3, ndcg, 0.0, p50_ms=ms)

    points = [
        point("cheap", 0.10, 0.05),
        point("dominated", 0.09, 0.20),  # dearer and worse than "cheap"
        point("best", 0.14, 1.00),
        point("middle", 0.12, 0.30),
        point("other protocol", 0.01, 0.01, protocol="training-part"),
    ]
    mark_frontier(points)
    on = {p.model for p in points if p.on_frontier}
    assert on == {"cheap", "best", "middle", "other protocol"}


def test_frontier_end_to_end_on_two_model_tables(two_parts, tmp_path):
    from simulations import frontier

    out = tmp_path / "frontier"
    argv = ["--tables", str(two_parts / "part0"), str(two_parts / "part1")]
    assert frontier.main(argv + ["--iters", "20", "--warmup", "5", "--out", str(out)]) == 0
    payload = json.loads((out / "frontier.json").read_text())
    points = {(p["model"], p["reading"]): p for p in payload["points"]}
    # both carry a state: each is a point re-reading its window and a point stepping
    assert set(points) == {(m, r) for m in ("gru4rec", "ttt4rec") for r in ("window", "stepping")}
    assert all(p["seeds"] == 2 and p["p50_ms"] > 0 for p in points.values())
    runtimes = {key: p["runtime"] for key, p in points.items()}
    assert runtimes[("gru4rec", "stepping")] == "onnxruntime step graph"
    assert runtimes[("ttt4rec", "window")] == "torch, re-reads L"
    runs = [r for part in (0, 1) for r in _payload(two_parts / f"part{part}")["runs"]]
    for (model, reading), point in points.items():
        field = "full_whole_history" if reading == "stepping" else "full"
        values = [r[field]["NDCG@10"] for r in runs if r["model"] == model]
        assert point["ndcg10"] == pytest.approx(sum(values) / len(values))
    assert any(p["on_frontier"] for p in points.values())
    assert (out / "frontier.png").stat().st_size > 0
    text = (out / "frontier.md").read_text()
    assert "gru4rec L=" in text and "ttt4rec trained L=50, stepping" in text


def test_merge_keeps_only_the_models_asked_for_and_the_frontier_refuses_a_run_twice(
    two_parts, tmp_path, capsys
):
    from simulations import frontier

    out = tmp_path / "gru_only"
    parts = [str(two_parts / "part0"), str(two_parts / "part1")]
    assert main(["--merge", *parts, "--models", "gru4rec", "--out", str(out)]) == 0
    assert {r["model"] for r in _payload(out)["runs"]} == {"gru4rec"}
    assert main(["--merge", *parts, "--models", "din", "--out", str(tmp_path / "x")]) == 2
    assert "no run of din" in capsys.readouterr().err
    argv = ["--tables", str(two_parts / "part0"), str(out), "--out", str(tmp_path / "f")]
    assert frontier.main(argv) == 2  # gru4rec seed 0 is in both folders
    err = capsys.readouterr().err.strip()
    assert "seed 0" in err and "appears twice" in err and len(err.splitlines()) == 1
