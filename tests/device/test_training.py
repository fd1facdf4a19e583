import json

import numpy as np
import pytest
import torch

from cli.main import main
from seqrec.checkpoint import load_srm
from seqrec.models import build_model
from seqrec.training import TrainConfig, ValidationSet, train_srm
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream


@pytest.fixture(scope="module")
def split():
    data = make_synthetic(
        num_users=80, num_items=150, num_topics=5, min_length=20, max_length=30, seed=2
    )
    return split_stream(data, test_window=10)


def test_training_lowers_loss_and_keeps_the_best_epoch(split):
    torch.manual_seed(0)
    model = build_model("sasrec", num_items=split.num_items, hidden_size=16, max_len=20)
    users = split.stream_users
    valid = ValidationSet.build(
        [split.train[u] for u in users], split.valid_target[users], split.num_items, max_len=20
    )
    seen = []
    result = train_srm(
        model,
        split.train,
        valid,
        TrainConfig(epochs=3, batch_size=64, max_len=20, progress=False),
        on_epoch=lambda e, r: seen.append(r),
    )
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert seen[-1]["loss"] < seen[0]["loss"]
    best = max(seen, key=lambda r: r["NDCG@10"])
    assert result.best_epoch == best["epoch"]
    # the model now holds the best epoch's weights: re-evaluating gives its metric
    assert valid.evaluate(model, "full")["NDCG@10"] == pytest.approx(best["NDCG@10"])


def test_train_config_is_validated():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="select_protocol"):
        TrainConfig(select_protocol="magic")


def test_train_srm_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "gru"
    argv = [
        "train-srm",
        "--model",
        "gru4rec",
        "--dataset",
        "synthetic",
        "--synthetic-users",
        "40",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--hidden-size",
        "16",
        "--max-len",
        "10",
    ]
    assert main(argv) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert log["stages"]["alone"]["best_epoch"] == 1 and log["model"] == "gru4rec"
    model = load_srm(out)
    scores = model.score(torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]]))
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()
    assert "alone: best epoch 1" in capsys.readouterr().out


def test_train_srm_cli_rejects_unknown_option(tmp_path, capsys):
    argv = [
        "train-srm",
        "--model",
        "sasrec",
        "--dataset",
        "synthetic",
        "--out",
        str(tmp_path),
        "--option",
        "wings=2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "bad --option 'wings=2'" in err and len(err.splitlines()) == 1


def test_validation_negatives_exclude_history_and_target(split):
    users = split.stream_users[:10]
    valid = ValidationSet.build(
        [split.train[u] for u in users], split.valid_target[users], split.num_items, max_len=20
    )
    for row, u in enumerate(users):
        own = set(split.train[u].tolist()) | {int(split.valid_target[u])}
        assert not own & set(valid.negatives[row].tolist())
    assert np.all(valid.targets == split.valid_target[users])


def test_the_training_device_is_resolved_or_refused_in_one_line(tmp_path, capsys):
    import torch

    from cli.main import main
    from seqrec.training import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal cannot happen")
    assert resolve_device("auto") == resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    argv = ["train-srm", "--model", "gru4rec", "--dataset", "synthetic", "--synthetic-users", "30"]
    assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "srm")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA device" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "srm").exists()  # refused before anything was written
