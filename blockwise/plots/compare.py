"""Several runs on one figure: how deep each stack keeps emulating its teacher.

Each run contributes its rollout error median against depth, from the evaluation that best
represents it (after fine-tuning if there was any), with its breakdown depth marked on the line.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from blockwise.plots.depth import breakdown_label, values
from blockwise.plots.teacher import _axes

# Which evaluation speaks for a run: the most trained stack it has.
PREFERENCE = ("finetuned", "stacked", "looped")


def representative(metrics: dict) -> tuple[str, dict]:
    """(evaluation name, LayerMetrics) of the most trained stack a run holds."""
    held = metrics.get("evaluations", {})
    for key in PREFERENCE:
        if key in held:
            return key, held[key]
    raise ValueError(f"the metrics of {metrics.get('recipe', 'a run')} hold no evaluation of a "
                     f"trained stack (one of {', '.join(PREFERENCE)})")


def plot_compare(
    runs: dict[str, dict], field: str | None = None, ax: Axes | None = None
) -> tuple[Figure, Axes]:
    """Rollout error median vs layer, one line per run (name -> its metrics), log scale.

    `field` defaults to each run's primary field, so runs of different teachers compare on
    what each one's breakdown depth is measured by.
    """
    fig, ax = _axes(ax, (6.5, 3.8))
    thresholds = set()
    for name, metrics in runs.items():
        key, m = representative(metrics)
        shown = field or m["primary"]
        layers = np.arange(1, m["layers"] + 1)
        median = values(m["rollout"][shown])
        label = breakdown_label(f"{name} ({key}, {shown})", m["breakdown_depth"], m["layers"])
        line = ax.plot(layers, median, marker="o", ms=2.5, lw=1.3, label=label)[0]
        depth = m["breakdown_depth"]
        if depth is not None:
            ax.plot(depth, median[depth - 1], marker="X", ms=9, color=line.get_color(),
                    mec="k", mew=0.6, ls="none")
        thresholds.add(m["threshold"])
    for threshold in sorted(thresholds):
        ax.axhline(threshold, color="tab:red", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer k (teacher steps emulated)")
    ax.set_ylabel("rollout normalized error (median)")
    ax.set_title("rollout error vs depth; X: breakdown, dotted: threshold", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig, ax
