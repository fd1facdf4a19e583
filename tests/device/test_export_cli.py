import re

import torch

from cli.main import main
from seqrec.checkpoint import save_srm
from seqrec.models import build_model


def test_export_onnx_cli_writes_both_graphs_and_checks_parity(tmp_path, capsys):
    torch.manual_seed(0)
    save_srm(build_model("ttt4rec", num_items=40, hidden_size=16, max_len=20), tmp_path / "ttt")
    assert main(["export-onnx", "--model", str(tmp_path / "ttt"), "--check-clicks", "20"]) == 0
    assert (tmp_path / "ttt" / "onnx" / "step.onnx").exists()
    assert (tmp_path / "ttt" / "onnx" / "scorer.onnx").exists()
    gap = float(re.search(r"max \|Δscore\| = (\S+)", capsys.readouterr().out).group(1))
    assert gap < 1e-4


def test_export_onnx_cli_refuses_a_stateless_model(tmp_path, capsys):
    save_srm(build_model("sasrec", num_items=40, hidden_size=16, max_len=20), tmp_path / "sas")
    assert main(["export-onnx", "--model", str(tmp_path / "sas")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ttt4rec and gru4rec export a step" in err and len(err.splitlines()) == 1
