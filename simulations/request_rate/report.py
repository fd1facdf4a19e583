"""The experiment's outputs: markdown, CSV, JSON, records and the plot."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from simulations.plots import plot_request_rate
from simulations.replay import (
    ReplayResult,
)
from simulations.request_rate.ages import ages_markdown
from simulations.request_rate.auc import auc_markdown
from simulations.request_rate.config import RequestRateConfig
from simulations.request_rate.experiment import ExperimentResult

# ---------------------------------------------------------------- outputs


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (intervals shown for NDCG@10 and HR@10)."""
    head = "| policy | knob | target | valid rate | rate | NDCG@5 | NDCG@10 [95% CI] | NDCG@20 "
    head += "| HR@5 | HR@10 [95% CI] | HR@20 |"
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        cells = [
            r["label"],
            _fmt(r["knob"], 3),
            _fmt(r["target_rate"], 2),
            _fmt(r["valid_rate"], 3),
            _fmt(r["request_rate"], 3),
            _fmt(r["NDCG@5"]),
            f"{r['NDCG@10']:.4f} [{r['NDCG@10_lo']:.4f}, {r['NDCG@10_hi']:.4f}]",
            _fmt(r["NDCG@20"]),
            _fmt(r["HR@5"]),
            f"{r['HR@10']:.4f} [{r['HR@10_lo']:.4f}, {r['HR@10_hi']:.4f}]",
            _fmt(r["HR@20"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plain_name(family: str) -> str:
    """A policy family as a reader says it: "consistency[kendall]" -> "consistency (kendall)"."""
    return family.replace("[", " (").replace("]", ")")


def goal_markdown(goal: list[dict[str, Any]], ratio: float) -> str:
    """Per target rate: the best policy chosen on validation, what it achieved, the share of the
    always − never gap it recovers, and random requests at the same rate (intervals: 95%
    bootstrap over users, paired)."""
    lines = [
        "| target rate | best policy (chosen on validation) | achieved rate | NDCG@10 "
        "| share of the always − never gap [95% CI] | random at the achieved rate, NDCG@10 "
        f"| best − random [95% CI] | best − never [95% CI] | ≥ {ratio:.0%} of always |",
        "|" + " --- |" * 9,
    ]
    for g in goal:
        rand = g.get("diff_vs_random", [np.nan] * 3)
        never = g.get("diff_vs_never", [np.nan] * 3)
        share = g.get("gap_share", [np.nan] * 3)
        lines.append(
            f"| {g['target_rate']:.2f} | {plain_name(g['best_family'])} | "
            f"{g['best_request_rate']:.3f} | {g['best_NDCG@10']:.4f} | "
            f"{share[0]:.0%} [{share[1]:.0%}, {share[2]:.0%}] | "
            f"{g.get('random_NDCG@10', np.nan):.4f} | "
            f"{rand[0]:+.4f} [{rand[1]:+.4f}, {rand[2]:+.4f}] | "
            f"{never[0]:+.4f} [{never[1]:+.4f}, {never[2]:+.4f}] | "
            f"{'yes' if g['reaches_ratio'] else 'no'} ({g['ratio_to_always']:.1%}) |"
        )
    return "\n".join(lines)


def rate_control_markdown(entries: list[dict[str, Any]]) -> str:
    """Per target rate: the chosen policy's achieved test rate and gap share, plain and under
    the per-device rate controller."""
    lines = [
        "| target rate | chosen policy | achieved rate, plain (off by) | achieved rate, "
        "controlled (off by) | NDCG@10 plain | NDCG@10 controlled | gap share plain "
        "| gap share controlled |",
        "|" + " --- |" * 8,
    ]
    for e in entries:
        shares = [e.get(f"{k}_gap_share", [np.nan] * 3) for k in ("plain", "controlled")]
        lines.append(
            f"| {e['target_rate']:.2f} | {plain_name(e['family'])} | "
            f"{e['plain_rate']:.3f} ({e['plain_rate_error']:+.0%}) | "
            f"{e['controlled_rate']:.3f} ({e['controlled_rate_error']:+.0%}) | "
            f"{e['plain_NDCG@10']:.4f} | {e['controlled_NDCG@10']:.4f} | "
            + " | ".join(f"{s[0]:.0%} [{s[1]:.0%}, {s[2]:.0%}]" for s in shares)
            + " |"
        )
    return "\n".join(lines)


def gaps_markdown(gaps: dict[str, list[float]]) -> str:
    """The reference gaps as lines `always − never: +0.0123 [+0.0100, +0.0150]`."""
    lines = [
        f"- NDCG@10 {_plain_gap_name(name)}: {m:+.4f} [{lo:+.4f}, {hi:+.4f}] (paired, users)"
        for name, (m, lo, hi) in gaps.items()
    ]
    return "\n".join(lines) + "\n"


def _plain_gap_name(name: str) -> str:
    """`always-always_alpha_0.5` as "always − always α=0.5", `never_llm_order` as
    "never (LLM order)"."""
    name = name.replace("-", " − ").replace("_alpha_", " α=")
    return name.replace("never_llm_order", "never (LLM order)")


def write_outputs(
    experiment: ExperimentResult,
    out: str | Path,
    config: RequestRateConfig,
    meta: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write `request_rate.{csv,json,md,png}` and `records.npz` into `out`; returns the paths."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"request_rate.{kind}" for kind in ("csv", "json", "md", "png")}
    paths["records"] = out / "records.npz"
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(experiment.rows[0]))
        writer.writeheader()
        writer.writerows(experiment.rows)
    payload = {
        "config": asdict(config),
        "meta": meta or {},
        "points": experiment.rows,
        "goal": experiment.goal,
        "notes": experiment.notes,
    }
    paths["json"].write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    title = f"# Request rate vs accuracy ({(meta or {}).get('dataset', '')})\n\n"
    text = title + markdown_table(experiment.rows) + "\n\n## Goal check\n\n"
    text += goal_markdown(experiment.goal, config.goal_ratio) + "\n\n"
    text += gaps_markdown(experiment.notes.get("reference_gaps", {}))
    if experiment.notes.get("list_age"):
        ages = experiment.notes["list_age"]
        text += "\n## NDCG@10 by list age: LLM order, SRM order, fused (test stream)\n\n"
        label = f"{ages.get('policy', '')} (rate {ages.get('policy_rate', float('nan')):.3f})"
        text += ages_markdown(ages["never"], ages.get("by_age", []), label)
    if experiment.notes.get("rate_control"):
        text += "\n## The per-device rate controller (test stream)\n\n"
        text += rate_control_markdown(experiment.notes["rate_control"]) + "\n"
    if experiment.notes.get("auc"):
        text += "\n## Which measure predicts a useful request (test stream)\n\n"
        text += auc_markdown(experiment.notes["auc"])
        paths["auc"] = out / "measure_auc.csv"
        with open(paths["auc"], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(experiment.notes["auc"][0]))
            writer.writeheader()
            writer.writerows(experiment.notes["auc"])
    paths["md"].write_text(text)
    plot_request_rate(experiment.rows, paths["png"], title=(meta or {}).get("dataset", ""))
    _write_records(experiment.results, paths["records"])
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_records(results: list[ReplayResult], path: Path) -> None:
    """Per-step records of every point: labels, users, `[P, U, T]` requested and ranks."""
    np.savez_compressed(
        path,
        labels=np.asarray([r.label for r in results]),
        users=results[0].users,
        requested=np.stack([r.requested for r in results]),
        ranks=np.stack([r.ranks for r in results]),
    )
