"""The server's structured logs: every record, warnings included, is one JSON line."""

from __future__ import annotations

import io
import json
import logging
import warnings

from cloud.logs import configure_json_logging


def test_log_records_and_python_warnings_are_json_lines():
    stream = io.StringIO()
    try:
        configure_json_logging("info", stream)
        logging.getLogger("lsc4rec.server").info("serving", extra={"port": 50051})
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("`old` is deprecated", FutureWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        logging.getLogger("py.warnings").handlers.clear()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records[0]["msg"] == "serving" and records[0]["port"] == 50051
    assert records[1]["logger"] == "py.warnings" and records[1]["level"] == "warning"
    assert "FutureWarning: `old` is deprecated" in records[1]["msg"]
    assert len(records) == 2


def test_saving_and_loading_a_generator_draws_no_progress_bar(served_generator, tmp_path, capsys):
    # transformers draws "Writing model shards" / "Loading weights" bars by default; in a log
    # (or the server's JSON-lines stderr) they are carriage-return noise.
    from cloud.loading import load_generator

    served_generator.save_pretrained(tmp_path / "llm")
    load_generator(tmp_path / "llm")
    captured = capsys.readouterr()
    assert captured.err == "" and "\r" not in captured.out
