"""The TTT4Rec hyper-parameter grid end to end on a tiny synthetic catalogue."""

from __future__ import annotations

import json

from simulations.ttt_grid import main


def test_grid_trains_each_cell_and_writes_table_json_and_plot(tmp_path):
    argv = ["--dataset", "synthetic", "--synthetic-users", "40", "--epochs", "1", "--patience", "0",
            "--hidden-size", "16", "--init-ranges", "0.02", "0.2", "--mini-batch-sizes", "1", "4",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads((tmp_path / "ttt_grid.json").read_text())
    cells = {(c["initializer_range"], c["mini_batch_size"]): c for c in payload["cells"]}
    assert set(cells) == {(0.02, 1), (0.02, 4), (0.2, 1), (0.2, 4)}
    for (init, size), c in cells.items():
        assert sorted(c["settings"]["options"]) == [
            f"ttt4rec:initializer_range={init}",
            f"ttt4rec:mini_batch_size={size}",
        ]
        assert 0.0 <= c["full"]["NDCG@10"] <= c["full"]["HR@10"] <= 1.0
    table = (tmp_path / "ttt_grid.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 0.2 |"))
    assert f"{cells[(0.2, 4)]['sampled']['NDCG@10']:.4f}" in row  # first table: sampled
    assert (tmp_path / "ttt_grid.png").stat().st_size > 1000
