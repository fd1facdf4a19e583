"""Plots of the simulation experiments (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REFERENCE_STYLES = {  # reference name -> (line style, colour)
    "never": ("--", "tab:gray"),
    "always": ("-", "black"),
    "llm_only": (":", "tab:brown"),
    "srm_only": ("-.", "tab:olive"),
    "always_alpha_0.5": ("-", "tab:pink"),
}
MARKERS = {"random": "x", "periodic": "s", "consistency": "o", "surprise": "^", "learned": "D"}


def _family_style(family: str, index: int) -> dict[str, Any]:
    """Colour by position in tab20 (no two curves share one), marker by kind of policy."""
    import matplotlib

    colour = matplotlib.colormaps["tab20"](index % 20)
    kind = family.split("[")[0]
    width = 2.2 if kind == "learned" else 1.4  # the policy the goal table usually picks
    return {"color": colour, "marker": MARKERS.get(kind, "o"), "linewidth": width}


def _plain(family: str) -> str:
    return family.replace("[", " (").replace("]", ")")


def plot_request_rate(
    rows: list[dict[str, Any]],
    path: str | Path,
    metric: str = "NDCG@10",
    title: str = "",
) -> Path:
    """A metric against the achieved request rate: one curve per policy family with its
    bootstrap interval as error bars, and a horizontal line per reference point; beside it,
    each curve's share of the always − never gap, `(metric − never) / (always − never)`.

    Args:
        rows: `simulations.request_rate.point_row` dicts (keys policy, request_rate, metric,
            metric_lo, metric_hi).
        path: PNG file to write.
        metric: which metric to plot.
        title: shown above the plot.
    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, (ax, share_ax) = plt.subplots(
        1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]}
    )
    curves: dict[str, list[dict[str, Any]]] = {}
    refs = {row["policy"]: row[metric] for row in rows if row["policy"] in REFERENCE_STYLES}
    for row in rows:
        if row["policy"] in REFERENCE_STYLES:
            style, colour = REFERENCE_STYLES[row["policy"]]
            ax.axhline(
                row[metric], linestyle=style, color=colour, linewidth=1.2, label=row["label"]
            )
        else:
            curves.setdefault(row["policy"], []).append(row)
    for index, (family, points) in enumerate(curves.items()):
        style = _family_style(family, index)
        points = sorted(points, key=lambda r: r["request_rate"])
        x = [r["request_rate"] for r in points]
        y = [r[metric] for r in points]
        err = [
            [r[metric] - r[f"{metric}_lo"] for r in points],
            [r[f"{metric}_hi"] - r[metric] for r in points],
        ]
        ax.errorbar(
            x,
            y,
            yerr=err,
            markersize=4,
            capsize=2,
            elinewidth=0.7,  # thin interval bars keep overlapping curves readable
            alpha=0.9,
            label=_plain(family),
            **style,
        )
        if "never" in refs and "always" in refs and refs["always"] != refs["never"]:
            gap = refs["always"] - refs["never"]
            share = [(v - refs["never"]) / gap for v in y]
            share_ax.plot(x, share, markersize=4, label=_plain(family), **style)
    share_ax.axhline(1.0, color="black", linewidth=1.0, label="always")
    share_ax.axhline(0.0, color="tab:gray", linestyle="--", linewidth=1.0, label="never")
    share_ax.set_xlabel("request rate (requests / steps)")
    share_ax.set_ylabel("share of the always − never gap")
    share_ax.set_xlim(-0.02, 1.02)
    share_ax.grid(alpha=0.3)
    share_ax.set_title("gap recovered")
    share_ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("request rate (requests / steps)")
    ax.set_ylabel(metric)
    ax.set_xlim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{metric} vs request rate" + (f" — {title}" if title else ""))
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
