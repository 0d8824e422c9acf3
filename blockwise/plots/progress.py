"""Does the stack still optimize? f - f* against layer, for the teacher and each stack, and the
progress ratio: the share of the teacher's (log) decrease of f - f* the stack achieves.

A stack can leave the teacher's path (its rollout error saturates) and still go downhill as
fast: these panels tell that apart from a stack that has stopped optimizing.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from blockwise.plots.depth import CONTROLS, EVALUATIONS, band, evaluations, values
from blockwise.plots.teacher import _axes

# Ratios far outside [0, 1] (an untrained stack climbing uphill) would squash the ones that
# matter; the panel shows this window at most.
RATIO_LIMITS = (-1.0, 2.0)


def plot_objective_depth(
    metrics: dict, ax: Axes | None = None, ratio_ax: Axes | None = None
) -> tuple[Figure, Axes]:
    """f - f* at layers 0..L (median, 10-90%), log scale, on `ax`; the progress ratio on
    `ratio_ax`. Without `ax`, a figure with both panels is made; with `ax` alone, the ratio
    is drawn only if `ratio_ax` is given too."""
    if ax is None:
        fig = Figure(figsize=(7.0, 4.8), layout="constrained")
        ax, ratio_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    fig = ax.figure
    present = evaluations(metrics)
    first = next(iter(present.values()))
    layers = np.arange(first["layers"] + 1)
    # The teacher's rollout is the same for every evaluation: the test problems' own.
    band(ax, layers, first["objective"]["teacher"], "k", label="teacher")
    for key, m in present.items():
        label, color = EVALUATIONS[key]
        band(ax, layers, m["objective"]["emulated"], color, label=label,
             spread=key not in CONTROLS)
    ax.set_yscale("log")
    ax.set_ylabel("f - f* (median, 10-90%)")
    ax.set_title(f"{metrics.get('recipe', '')} objective vs depth".strip())
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ratio_ax is None:
        ax.set_xlabel("layer k (teacher steps emulated)")
    else:
        plot_progress_ratio(metrics, ax=ratio_ax)
        ax.tick_params(labelbottom=False)
    return fig, ax


def ratio_axis(ax: Axes, shown: list[np.ndarray]) -> None:
    """The teacher's progress (1) and none (0) as lines, and y limits that hold the ratios
    `shown` within RATIO_LIMITS (a stack far off would flatten the rest)."""
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.axhline(0.0, color="k", lw=0.8, ls=":")
    data = np.concatenate(shown)
    data = data[np.isfinite(data)]
    low = max(RATIO_LIMITS[0], min(-0.1, data.min(initial=0.0)))
    high = min(RATIO_LIMITS[1], max(1.1, data.max(initial=1.0)))
    ax.set_ylim(low - 0.05, high + 0.05)


def plot_progress_ratio(metrics: dict, ax: Axes | None = None) -> tuple[Figure, Axes]:
    """Progress ratio at layers 1..L per evaluation: 1 is the teacher's progress, 0 none."""
    fig, ax = _axes(ax, (7.0, 2.2))
    present = evaluations(metrics)
    layers = np.arange(1, next(iter(present.values()))["layers"] + 1)
    shown = []
    for key, m in present.items():
        band(ax, layers, m["progress_ratio"], EVALUATIONS[key][1], spread=key not in CONTROLS)
        shown.append(values(m["progress_ratio"]))
    ratio_axis(ax, shown)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer k (teacher steps emulated)")
    ax.set_ylabel("progress ratio\n(1: as teacher)", fontsize="small")
    return fig, ax
