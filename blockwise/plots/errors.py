"""Per-block emulation error against depth, from the rows `metrics.json` stores."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from blockwise.plots.teacher import _axes

STYLES = {"trained": ("tab:blue", "-"), "untrained": ("tab:gray", "--")}


def plot_block_errors(
    rows: list[dict], field: str, ax: Axes | None = None, title: str | None = None
) -> tuple[Figure, Axes]:
    """Teacher-forced normalized error of each block for one field: median with a 10-90%
    band for the trained and the untrained block, and the identity baseline (1) as a line."""
    fig, ax = _axes(ax)
    layers = [r["layer"] for r in rows]
    for label, (color, style) in STYLES.items():
        s = [r["fields"][field][label] for r in rows]
        ax.plot(layers, [x["median"] for x in s], style, color=color, marker="o", ms=3, label=label)
        ax.fill_between(
            layers, [x["p10"] for x in s], [x["p90"] for x in s], color=color, alpha=0.15, lw=0
        )
    ax.axhline(1.0, color="k", lw=0.8, ls=":", label="identity (no move)")
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_xlabel("block k (teacher step emulated)")
    ax.set_ylabel(f"normalized error, {field}")
    ax.set_title(title or f"teacher-forced error: {field}")
    ax.legend(fontsize="small")
    return fig, ax


def plot_pretrain_errors(rows: list[dict], title: str = "") -> Figure:
    """One panel per learned field."""
    fields = list(rows[0]["fields"])
    fig = Figure(figsize=(4 * len(fields), 3.4), layout="constrained")
    for ax, field in zip(fig.subplots(1, len(fields), squeeze=False)[0], fields, strict=True):
        plot_block_errors(rows, field, ax=ax, title=f"{title} {field}".strip())
    return fig
