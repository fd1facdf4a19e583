"""Progress bars: plain lines in a log, nothing when turned off."""

from __future__ import annotations

import io
import os

from shared.progress import NO_PROGRESS_ENV, progress_bar


def test_a_bar_in_a_log_writes_whole_lines_without_carriage_returns(monkeypatch):
    monkeypatch.delenv(NO_PROGRESS_ENV, raising=False)
    log = io.StringIO()  # not a terminal
    bar = progress_bar(range(5000), desc="epoch 1/1", stream=log)
    for step in bar:
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")  # a refresh per step in a terminal
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3  # the first state, maybe one more, the final one
    assert lines[-1].startswith("epoch 1/1: 100%") and "5000/5000" in lines[-1]


def test_the_environment_variable_and_enabled_turn_bars_off(monkeypatch):
    log = io.StringIO()
    for _ in progress_bar(range(10), desc="x", stream=log, enabled=False):
        pass
    monkeypatch.setenv(NO_PROGRESS_ENV, "1")
    for _ in progress_bar(range(10), desc="y", stream=log):
        pass
    assert log.getvalue() == ""


def test_the_cli_option_turns_bars_off_for_the_whole_run(monkeypatch, capsys):
    from cli.main import main

    monkeypatch.delenv(NO_PROGRESS_ENV, raising=False)
    assert (
        main(
            ["--no-progress", "data", "stats", "--dataset", "synthetic", "--synthetic-users", "20"]
        )
        == 0
    )
    assert os.environ[NO_PROGRESS_ENV] == "1"  # monkeypatch restores it after the test
    assert "users" in capsys.readouterr().out
