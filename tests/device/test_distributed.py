"""Data-parallel training: `train-srm` under torchrun, two CPU processes on the gloo backend,
follows the loss curve of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
# GRU4Rec without dropout: every process draws the same batches, and with no random masks
# the two processes' summed gradients are exactly the one process's
ARGV = ["train-srm", "--model", "gru4rec", "--dataset", "synthetic", "--synthetic-users", "60",
        "--epochs", "3", "--patience", "0", "--loss", "ce", "--hidden-size", "16",
        "--max-len", "20", "--windows-per-batch", "7", "--option", "dropout=0",
        "--threads", "1"]  # fmt: skip


# the item LM trains with the same engine: no dropout anywhere, so the curves agree exactly
LLM_ARGV = ["train-llm", "--dataset", "synthetic", "--synthetic-users", "60", "--epochs", "2",
            "--patience", "0", "--d-model", "16", "--layers", "1", "--heads", "2",
            "--d-ff", "32", "--windows-per-batch", "7", "--dropout", "0",
            "--attention-dropout", "0", "--threads", "1"]  # fmt: skip


def _train(out: Path, processes: int, argv: list[str] = ARGV) -> dict:
    command = [sys.executable, "-m", "cli.main", *argv, "--out", str(out)]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launcher, f"--nproc-per-node={processes}", "-m", "cli.main", *command[3:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads((out / "training_log.json").read_text())
    return log["stages"]["alone"] if "stages" in log else log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return {n: (_train(root / f"p{n}", n), root / f"p{n}") for n in (1, 2)}


def test_two_gloo_processes_follow_the_one_process_loss_curve(runs):
    (alone, _), (pair, _) = runs[1], runs[2]
    assert (alone["processes"], pair["processes"]) == (1, 2)
    losses = [[e["loss"] for e in run["epochs"]] for run in (alone, pair)]
    # the same global batches; float sums in another order: equal to 1e-5 relative
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    assert losses[0][-1] < losses[0][0]  # it trained
    metrics = [[e["NDCG@10"] for e in run["epochs"]] for run in (alone, pair)]
    np.testing.assert_allclose(metrics[1], metrics[0], atol=1e-6)


def test_the_lead_process_writes_the_same_weights(runs):
    weights = [load_file(str(folder / "model.safetensors")) for _, folder in runs.values()]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_allclose(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-6)


def test_the_item_lm_trains_across_two_gloo_processes_as_in_one(tmp_path):
    alone, pair = (_train(tmp_path / f"llm{n}", n, LLM_ARGV) for n in (1, 2))
    assert (alone["processes"], pair["processes"]) == (1, 2)
    losses = [[e["loss"] for e in run["epochs"]] for run in (alone, pair)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    recalls = [[e["NDCG@10"] for e in run["epochs"]] for run in (alone, pair)]
    np.testing.assert_allclose(recalls[1], recalls[0], atol=1e-6)
