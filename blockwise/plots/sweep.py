"""The depth sweep: how a recipe's stacks fare as K grows, from a sweep.json summary.

Three panels against K (log2 axis): breakdown depth, the median rollout error of the primary
field at the last layer (log axis) and the progress ratio there. Each evaluation keeps the
colour it has in the per-run figures (`depth.EVALUATIONS`: stacked is before fine-tuning,
finetuned after, the controls grey and brown); the identity (s_0 held) is black, dash-dotted.
A line is the median over seeds and its band the seeds' min to max. A stack that held to its
last layer (breakdown depth null) is drawn at K with an open marker: "> K", on the diagonal
that bounds the panel. Breakdown depths are whole layers, so stacks often share one: that
panel's lines are dodged sideways a little to stay apart.
"""

from __future__ import annotations

import itertools

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from blockwise.plots.depth import EVALUATIONS, values
from blockwise.plots.progress import ratio_axis

IDENTITY = ("identity (s_0 held)", "k", "-.")
# Colours of evaluations the per-run figures do not know yet, in order of appearance.
SPARE_COLOURS = ("tab:purple", "tab:pink", "tab:olive", "tab:cyan", "tab:red")
DODGE = 0.035  # sideways step between breakdown-depth lines, in log2 units of K


def styles(summary: dict) -> dict[str, tuple[str, str, str]]:
    """(label, colour, line style) of every line: the evaluations in the per-run figures'
    order, any others after them, then the identity."""
    names = list(summary["evaluations"])
    known = [n for n in EVALUATIONS if n in names]
    spare = itertools.cycle(SPARE_COLOURS)
    out = {n: (*EVALUATIONS[n], "-") for n in known}
    out |= {n: (n, next(spare), "-") for n in names if n not in EVALUATIONS}
    out["identity"] = IDENTITY
    return out


def _series(summary: dict, name: str, measure: str) -> dict | None:
    source = summary["identity"] if name == "identity" else summary["evaluations"][name]
    return source.get(measure)


def _line(ax: Axes, x: np.ndarray, spread: dict, style: tuple, band: bool) -> None:
    """The median with markers, and the min-max band over seeds if `band`."""
    _, colour, ls = style
    ax.plot(x, values(spread), color=colour, ls=ls, marker="o", ms=3, lw=1.3)
    if band:
        ax.fill_between(x, values(spread, "min"), values(spread, "max"), color=colour,
                        alpha=0.15, lw=0)


def _breakdown(
    ax: Axes, x: np.ndarray, depths: np.ndarray, spread: dict, style: tuple, band: bool
) -> None:
    """Breakdown depth at positions `x` (the `depths`, dodged): a null (held to K) is drawn
    at K with an open marker."""
    _, colour, ls = style
    held = np.array([v is None for v in spread["median"]])
    median = np.where(held, depths, values(spread))
    ax.plot(x, median, color=colour, ls=ls, lw=1.3)
    ax.plot(x[~held], median[~held], "o", color=colour, ms=3.5)
    ax.plot(x[held], median[held], "o", mfc="none", mec=colour, ms=6)
    if band:
        low = np.where(np.isnan(values(spread, "min")), depths, values(spread, "min"))
        high = np.where(np.isnan(values(spread, "max")), depths, values(spread, "max"))
        ax.fill_between(x, low, high, color=colour, alpha=0.15, lw=0)


def _log2_axis(ax: Axes, ticks: list[int], axis: str = "x") -> None:
    """A log2 axis labelled with the depths themselves (1, 2, 4, ..., 96), not powers of 2."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=2)
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_locator(NullLocator())


def plot_sweep(summary: dict) -> Figure:
    """The sweep figure of a sweep.json summary (`blockwise.sweep`): three panels and one key."""
    x = np.array(summary["depths"], dtype=float)
    band = len(summary["seeds"]) > 1
    lines = styles(summary)
    fig = Figure(figsize=(14.0, 4.0), layout="constrained")
    depth_ax, error_ax, progress_ax = fig.subplots(1, 3, sharex=True)

    # A stack cannot break down deeper than its K: the diagonal bounds the panel.
    depth_ax.plot(x, x, color="0.6", lw=0.8, ls=":")
    drawn = [n for n in lines if _series(summary, n, "breakdown_depth") is not None]
    for i, name in enumerate(drawn):
        shift = 2 ** (DODGE * (i - (len(drawn) - 1) / 2))
        spread = _series(summary, name, "breakdown_depth")
        _breakdown(depth_ax, x * shift, x, spread, lines[name], band)
    _log2_axis(depth_ax, summary["depths"], "y")
    depth_ax.set_ylabel("breakdown depth (layer)")
    depth_ax.set_title(f"first layer with error > {summary['threshold']:g}", fontsize="small")

    for name, style in lines.items():
        _line(error_ax, x, _series(summary, name, "last_error"), style, band)
    error_ax.axhline(summary["threshold"], color="tab:red", lw=0.8, ls=":")
    error_ax.set_yscale("log")
    error_ax.set_ylabel(f"normalized error, {summary['primary']}")
    error_ax.set_title("rollout error at layer K (median over problems)", fontsize="small")

    shown = []
    for name, style in lines.items():
        spread = _series(summary, name, "progress")
        if spread is not None:
            _line(progress_ax, x, spread, style, band)
            shown += [values(spread, k) for k in ("median", "min", "max")]
    ratio_axis(progress_ax, shown)
    progress_ax.set_ylabel("progress ratio (1: as teacher)")
    progress_ax.set_title("progress ratio at layer K (median over problems)", fontsize="small")

    for ax in (depth_ax, error_ax, progress_ax):
        _log2_axis(ax, summary["depths"])
        ax.set_xlabel("K (blocks stacked = teacher steps)")
    seeds = len(summary["seeds"])
    spread = f"median over {seeds} seeds, band min to max" if band else "one seed"
    fig.suptitle(f"{summary['recipe']}: depth sweep ({spread})")
    key = [Line2D([], [], color=c, ls=ls, marker="o", ms=3, label=label)
           for label, c, ls in lines.values()]
    key += [
        Line2D([], [], ls="none", marker="o", mfc="none", mec="0.3", ms=6,
               label="held to layer K (no breakdown)"),
        Line2D([], [], color="0.6", ls=":", lw=0.8, label="breakdown depth = K"),
        Line2D([], [], color="tab:red", ls=":", lw=0.8,
               label=f"breakdown threshold {summary['threshold']:g}"),
    ]
    fig.legend(handles=key, loc="outside right upper", fontsize="small")
    return fig
