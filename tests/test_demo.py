"""The demo's stages are real command lines of the subcommands they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import demo


def test_every_demo_stage_parses_with_its_subcommand(tmp_path):
    args = argparse.Namespace(
        dataset="synthetic",
        seed=3,
        llm_epochs=5,
        srm_epochs=4,
        fleet_users=6,
        out=str(tmp_path),
        srm_model="gru4rec",
    )
    plan = demo.stages(args, Path(tmp_path)) + [("devices", demo.fleet_stage(args, tmp_path))]
    parser = demo.stage_parser()
    assert [name for name, _ in plan] == [
        "data",
        "train-llm",
        "train-srm",
        "experiment",
        "devices",
    ]
    for name, argv in plan:
        parsed = parser.parse_args(argv)  # exits (fails the test) on an unknown option
        assert parsed.command == name and callable(parsed.func)
    llm = parser.parse_args(plan[1][1])
    assert (llm.generator, llm.epochs, llm.patience, llm.seed) == ("item-lm", 5, 3, 3)
    srm = parser.parse_args(plan[2][1])
    assert (srm.model, srm.loss, srm.epochs) == ("gru4rec", "ce", 4)


def test_the_demo_ships_the_model_asked_for(tmp_path):
    args = argparse.Namespace(
        dataset="synthetic", seed=0, llm_epochs=5, srm_epochs=4, fleet_users=6, out=str(tmp_path),
        srm_model="ttt4rec",
    )  # fmt: skip
    srm = demo.stage_parser().parse_args(dict(demo.stages(args, Path(tmp_path)))["train-srm"])
    assert srm.model == "ttt4rec" and srm.option == ["initializer_range=0.1"]
