"""Per-block emulation error against depth, from the rows of
`evaluation.teacher_forced.teacher_forced_errors` (metrics.json's pretrain.teacher_forced)."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from blockwise.evaluation.teacher_forced import IDENTITY
from blockwise.plots.teacher import _axes

STYLES = {
    "trained": ("tab:blue", "-"),
    "untrained": ("tab:gray", "--"),
    "shuffled": ("tab:brown", ":"),
}
"""Colour and line style per stack label; other labels take the next colour, solid. The
identity control, exactly 1, is drawn as a line."""


def plot_block_errors(
    rows: list[dict], field: str, ax: Axes | None = None, title: str | None = None
) -> tuple[Figure, Axes]:
    """Teacher-forced normalized error of each block for one field: median with a 10-90% band
    for each stack the rows hold (the trained block and its controls), and the identity
    baseline (1) as a line."""
    fig, ax = _axes(ax)
    layers = [r["layer"] for r in rows]
    labels = [label for label in rows[0]["fields"][field] if label != IDENTITY]
    for label in labels:
        color, style = STYLES.get(label, (None, "-"))
        s = [r["fields"][field][label] for r in rows]
        line = ax.plot(layers, [x["median"] for x in s], style, color=color, marker="o", ms=3,
                       label=label)[0]
        ax.fill_between(layers, [x["p10"] for x in s], [x["p90"] for x in s],
                        color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(1.0, color="k", lw=0.8, ls=":", label="identity (no move)")
    ax.set_yscale("log")
    if len(layers) <= 16:
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
