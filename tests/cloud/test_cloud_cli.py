"""`lsc4rec train-llm` and `lsc4rec candidates` end to end on tiny synthetic data."""

from __future__ import annotations

import json

import pytest

from cli.main import main

TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--d-ff", "32", "--max-history", "8"]
FAST = ["--epochs", "1", "--samples-per-epoch", "32", "--batch-size", "16", "--max-eval-users", "4"]
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-users", "20"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm") / "model"
    argv = ["train-llm", "--dataset", "synthetic", "--synthetic-users", "20", "--out", str(out)]
    assert main(argv + TINY + FAST) == 0
    return out


def test_train_llm_writes_a_loadable_folder(model_dir):
    log = json.loads((model_dir / "training_log.json").read_text())
    assert log["dataset"] == "synthetic" and log["best_epoch"] == 1
    assert log["generator"] == "item-lm" and len(log["epochs"]) == 1
    meta = json.loads((model_dir / "generator.json").read_text())
    assert meta["kind"] == "item-lm" and (model_dir / "model" / "config.json").is_file()


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prompt") / "model"
    argv = ["train-llm", "--generator", "prompt", *SYNTHETIC, "--out", str(out)]
    assert main(argv + TINY + FAST) == 0
    return out


def test_train_llm_prompt_generator(prompt_dir):
    from cloud.loading import load_generator

    out = prompt_dir
    assert (out / "tokenizer").is_dir()
    assert json.loads((out / "generator.json").read_text())["kind"] == "prompt"
    assert load_generator(out).generate([[1, 2]], n=5)[0].items.shape == (5,)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-model", "."], "--base-model applies to --generator prompt only"),
        (["--backbone", "t5"], "decoder-only"),
        (["--generator", "prompt", "--item-attributes", "on"], "--item-text apply to"),
        (["--generator", "prompt", "--item-text", "on"], "--item-text apply to"),
    ],
)
def test_train_llm_rejects_options_of_the_other_generator(tmp_path, capsys, extra, message):
    argv = ["train-llm", *SYNTHETIC, "--out", str(tmp_path / "m"), *TINY, *FAST, *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_item_attributes_need_a_data_set_that_has_them(tmp_path, capsys):
    rows = [f"{u},{i},{100 * u + i}" for u in range(3) for i in range(1, 30)]
    (tmp_path / "log.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    argv = ["train-llm", "--dataset", "csv", "--path", str(tmp_path / "log.csv")]
    assert main(argv + ["--out", str(tmp_path / "m"), "--item-attributes", "on", *TINY]) == 2
    assert "csv has no item attributes" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "m"), "--item-text", "on", *TINY]) == 2
    assert "csv has no item titles to embed" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_candidates_prints_a_ranked_table(model_dir, capsys):
    assert main(["candidates", "--model", str(model_dir), "--history", "3, 7,9", "-n", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "5 candidates" in lines[0] and lines[1].split()[:3] == ["rank", "item", "log-prob"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert not {"3", "7", "9"} & {r[1] for r in rows}


def test_candidates_json(model_dir, capsys):
    assert (
        main(["candidates", "--model", str(model_dir), "--history", "4", "-n", "3", "--json"]) == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["items"]) == 3 and 4 not in payload["items"]


@pytest.mark.parametrize(
    ("history", "n", "message"),
    [
        ("1,x", "5", "'x' is not an item id"),
        (",", "5", "--history is empty"),
        ("1,100000", "5", "unknown item id 100000"),
        ("1,2", "0", "n must be"),
    ],
)
def test_candidates_bad_input_exits_2(model_dir, capsys, history, n, message):
    assert main(["candidates", "--model", str(model_dir), "--history", history, "-n", n]) == 2
    assert message in capsys.readouterr().err


def test_missing_model_folder_exits_2(tmp_path, capsys):
    assert main(["candidates", "--model", str(tmp_path / "none"), "--history", "1"]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_bad_train_options_exit_2(tmp_path, capsys):
    argv = ["train-llm", "--dataset", "synthetic", "--out", str(tmp_path / "m"), "--heads", "3"]
    assert main(argv + TINY[:2]) == 2
    assert "divisible" in capsys.readouterr().err


def test_candidate_table_script(model_dir, prompt_dir, tmp_path, capsys):
    from simulations import candidate_table

    out = tmp_path / "table"
    argv = ["--model", str(model_dir), str(prompt_dir), *SYNTHETIC, "--fresh-stale"]
    assert candidate_table.main(argv + ["-n", "10", "--bootstrap", "50", "--out", str(out)]) == 0
    payload = json.loads((out / "candidate_table.json").read_text())
    names = [row["name"] for row in payload["rows"]]
    assert names[0].startswith("generator qwen2-items") and names[1].startswith("generator t5")
    assert names[2] == "most popular"
    assert all(0.0 <= row["Recall@10"] <= 1.0 for row in payload["rows"])
    assert "| most popular |" in capsys.readouterr().out
    tables = json.loads((out / "fresh_stale.json").read_text())
    assert [t["model"] for t in tables] == [n.split()[1] for n in names[:2]]
    rows = tables[0]["rows"]
    assert [r["offset"] for r in rows] == [str(k) for k in range(1, 11)] + ["mean"]
    assert rows[0]["in list diff"] == 0.0  # offset 1: the fresh list is the stale one
    assert all(r["in list diff_lo"] <= r["in list diff"] <= r["in list diff_hi"] for r in rows)


def test_latency_benchmark_script(model_dir, prompt_dir, tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "llm_latency.py"
    spec = importlib.util.spec_from_file_location("llm_latency", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "llm_latency", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "lat.json"
    argv = ["--model", str(model_dir), str(prompt_dir), *SYNTHETIC]
    argv += ["--requests", "4", "--batch-sizes", "1", "2", "-n", "5", "--warmup", "1"]
    assert (
        bench.main(argv + ["--searches", "trie", "hf", "--hf-requests", "2", "--out", str(out)])
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["search"], r["batch"]) for r in rows] == [
        ("exact", 1),
        ("exact", 2),
        ("trie", 1),
        ("trie", 2),
        ("hf", 1),
        ("hf", 2),
    ]
