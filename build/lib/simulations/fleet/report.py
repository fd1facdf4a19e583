"""The fleet's outputs: a summary table and `fleet.json`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from simulations.fleet.backends import FleetResult

# ---------------------------------------------------------------- outputs


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fleet summaries as a markdown table."""
    head = (
        "| workers | users | steps | rate | NDCG@10 | HR@10 | req ok | req failed | "
        "p50 ms | p95 ms | steps/s | req/s |"
    )
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        cells = [
            r.get("workers", ""),
            r["users"],
            r["steps"],
            f"{r['request_rate']:.3f}",
            f"{r['NDCG@10']:.4f}",
            f"{r['HR@10']:.4f}",
            r["requests_ok"],
            r["requests_failed"],
            _ms(r["latency_p50_ms"]),
            _ms(r["latency_p95_ms"]),
            f"{r['steps_per_s']:.1f}",
            f"{r['requests_per_s']:.1f}",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _finite(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in values]


def fleet_payload(result: FleetResult, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary, config, fault events and per-device records, ready for JSON."""
    config = asdict(result.config)
    config.pop("token", None)  # never write a secret to disk
    summary = {"workers": result.config.workers, **result.summary()}
    devices = [
        {
            "user": d.user,
            "requested": d.requested.tolist(),
            "failed": d.failed.tolist(),
            "lists_used": d.lists_used.tolist(),
            "ranks": _finite(d.ranks),  # null = the target was not in the list
            "steps_observed": d.steps_observed,
        }
        for d in result.devices
    ]
    requests = [asdict(r) for r in result.requests]
    return {
        "meta": meta or {},
        "config": config,
        "summary": summary,
        "events": result.events,
        "devices": devices,
        "requests": requests,
    }


def write_fleet_json(
    result: FleetResult, path: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """Write `fleet_payload` to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fleet_payload(result, meta), indent=2) + "\n")
    return path
