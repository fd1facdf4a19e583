"""What the device adds as its list ages: NDCG@10 of the held list per list age, in the LLM's
own order, in the SRM's order, and fused.

A list made at step j and still held at step t is `t − j` clicks old. The LLM ordered it for
the user as they were at j; the SRM has seen every click since. Per age this table shows how
the three orders compare, at `never` (the initial list, held for the whole stream: age = t)
and for a chosen policy (the ages its held lists reached). The device's share between
requests is the fused row minus the LLM-order row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from device.fusion import Fusion, LLMOnlyFusion, SRMOnlyFusion
from shared.metrics import ndcg
from simulations.replay import ReplayData, ReplayResult
from simulations.request_rate.statistics import paired_difference


def never_by_age(
    data: ReplayData, fusion: Fusion, indices: np.ndarray, confidence: float
) -> list[dict[str, Any]]:
    """Per age a: NDCG@10 at step a of the initial list (made at step 0) in the three orders,
    and fused − LLM order with its paired bootstrap interval over users."""
    orders = _orders(data, fusion)
    rows = []
    for age in range(data.window):
        values = {name: ndcg(ranks[:, age, 0], 10) for name, ranks in orders.items()}
        rows.append(
            {
                "age": age,
                "states": int(data.num_users),
                **{f"{name}_NDCG@10": float(v.mean()) for name, v in values.items()},
                "fused-llm_order": list(
                    paired_difference(values["fused"], values["llm_order"], indices, confidence)
                ),
            }
        )
    return rows


def policy_by_age(data: ReplayData, fusion: Fusion, result: ReplayResult) -> list[dict[str, Any]]:
    """Per age a: NDCG@10 of the lists `result`'s policy held at age a, in the three orders
    (means over those states; ages the policy never reached are left out)."""
    orders = _orders(data, fusion)
    users, steps = np.indices(result.lists_used.shape)
    held = result.lists_used
    age = steps - held
    rows = []
    for a in range(data.window):
        at = age == a
        if not at.any():
            continue
        values = {
            name: float(ndcg(ranks[users[at], steps[at], held[at]], 10).mean())
            for name, ranks in orders.items()
        }
        rows.append(
            {"age": a, "states": int(at.sum()), **{f"{k}_NDCG@10": v for k, v in values.items()}}
        )
    return rows


def _orders(data: ReplayData, fusion: Fusion) -> dict[str, np.ndarray]:
    """`[U, T, T]` target ranks of every held list in the three orders (memoised by `data`)."""
    return {
        "llm_order": data.fused_ranks(LLMOnlyFusion()),
        "srm_order": data.fused_ranks(SRMOnlyFusion()),
        "fused": data.fused_ranks(fusion),
    }


def ages_markdown(never: list[dict[str, Any]], policy: list[dict[str, Any]], label: str) -> str:
    """The two per-age tables as markdown."""
    lines = [
        "At `never` (the initial list held for the whole stream; one state per user and age):",
        "",
        "| list age | LLM order | SRM order | fused | fused − LLM order [95% CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in never:
        m, lo, hi = r["fused-llm_order"]
        lines.append(
            f"| {r['age']} | {r['llm_order_NDCG@10']:.4f} | {r['srm_order_NDCG@10']:.4f} | "
            f"{r['fused_NDCG@10']:.4f} | {m:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
        )
    if policy:
        lines += ["", f"For {label} (the lists it held, by age):", "",
                  "| list age | states | LLM order | SRM order | fused |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in policy:
            lines.append(
                f"| {r['age']} | {r['states']} | {r['llm_order_NDCG@10']:.4f} | "
                f"{r['srm_order_NDCG@10']:.4f} | {r['fused_NDCG@10']:.4f} |"
            )
    return "\n".join(lines) + "\n"
