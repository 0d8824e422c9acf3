"""Per-layer emulation error against depth, from the evaluations `metrics.json` stores.

Every evaluation present (the stack before and after fine-tuning, the untrained and shuffled
controls, the looped baseline) gets one colour; teacher-forced error is dashed, rollout error
solid, each a median with its 10-90% band. The identity rollout (never move from s_0) is the
baseline a stack must beat, and the breakdown depth, where rollout error first passes the
threshold, is marked.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from blockwise.plots.teacher import _axes

# Drawing order and look of each evaluation; the controls are grey and brown, so that they
# read as such.
EVALUATIONS = {
    "untrained": ("untrained (control)", "0.55"),
    "shuffled": ("shuffled pairs (control)", "tab:brown"),
    "stacked": ("stacked, before fine-tuning", "tab:blue"),
    "finetuned": ("after fine-tuning", "tab:orange"),
    "looped": ("looped (one block)", "tab:green"),
}
CONTROLS = ("untrained", "shuffled")
MODES = {"teacher_forced": ("teacher-forced", "--"), "rollout": ("rollout", "-")}
BLOW_UP = 1e308  # at or beyond: a written inf (strict JSON has none)


def values(summary: dict, key: str = "median") -> np.ndarray:
    """One series of a summary as floats, read back from what strict JSON could hold: null is
    NaN, and +-1.8e308 (how the evaluation writes a blow-up's inf) is inf again, so that it
    drops out of a log axis instead of stretching it to 1e308."""
    x = np.array([np.nan if v is None else v for v in summary[key]], dtype=float)
    return np.where(np.abs(x) >= BLOW_UP, np.sign(x) * np.inf, x)


def band(
    ax: Axes, x: np.ndarray, summary: dict, color, ls: str = "-", label=None, spread: bool = True
) -> None:
    """The median as a line, with its 10-90% band unless `spread` is False."""
    ax.plot(x, values(summary), ls=ls, color=color, marker="o", ms=2.5, lw=1.3, label=label)
    if spread:
        ax.fill_between(x, values(summary, "p10"), values(summary, "p90"), color=color,
                        alpha=0.12, lw=0)


def evaluations(metrics: dict) -> dict[str, dict]:
    """The evaluations present, in drawing order; a ValueError if there are none."""
    present = {k: metrics["evaluations"][k] for k in EVALUATIONS
               if k in metrics.get("evaluations", {})}
    if not present:
        name = metrics.get("recipe", "this run")
        raise ValueError(f"the metrics of {name} hold no evaluations ({', '.join(EVALUATIONS)})"
                         ": the run has not reached its evaluation stage")
    return present


def breakdown_label(label: str, depth: int | None, layers: int) -> str:
    """A legend label saying where a stack broke down, or how deep it held."""
    return f"{label}: breaks at {depth}" if depth is not None else f"{label}: holds to {layers}"


def legends(metrics: dict) -> tuple[list[Line2D], list[Line2D]]:
    """The two keys of a depth-error plot: which stack each colour is (with its breakdown),
    and which measurement each line style is."""
    present = evaluations(metrics)
    first = next(iter(present.values()))
    stacks = [Line2D([], [], color=EVALUATIONS[k][1],
                     label=breakdown_label(EVALUATIONS[k][0], m["breakdown_depth"], m["layers"]))
              for k, m in present.items()]
    kinds = [Line2D([], [], color="0.3", ls=ls, label=name) for name, ls in MODES.values()]
    kinds += [Line2D([], [], color="k", ls="-.", lw=1.0, label="identity rollout"),
              Line2D([], [], color="tab:red", ls=":", lw=0.8,
                     label=f"breakdown threshold {first['threshold']:g}")]
    return stacks, kinds


def plot_depth_errors(
    metrics: dict, field: str | None = None, ax: Axes | None = None, legend: bool = True
) -> tuple[Figure, Axes]:
    """Normalized error of `field` (default: the primary one) vs layer, log scale; with
    `legend`, its keys to the right of the axes."""
    fig, ax = _axes(ax, (7.0, 3.8))
    present = evaluations(metrics)
    first = next(iter(present.values()))
    field = field or first["primary"]
    layers = np.arange(1, first["layers"] + 1)
    marked = 0
    for key, m in present.items():
        color = EVALUATIONS[key][1]
        # The control's bands and breakdown (at once, by construction) would only hide the
        # stacks' own: its median lines are the comparison that matters.
        control = key in CONTROLS
        for mode, (_, ls) in MODES.items():
            band(ax, layers, m[mode][field], color, ls, spread=not control)
        if m["breakdown_depth"] is not None and not control:
            ax.axvline(m["breakdown_depth"], color=color, lw=0.9, ls=":")
            # Labels stack downwards so that evaluations breaking at one depth stay legible,
            # and sit inside the axes: left of the line in the deeper half.
            right = m["breakdown_depth"] <= (1 + len(layers)) / 2
            ax.annotate(f"breaks at {m['breakdown_depth']}", (m["breakdown_depth"], 1.0),
                        xycoords=("data", "axes fraction"),
                        xytext=(3 if right else -3, -3 - 10 * marked), textcoords="offset points",
                        ha="left" if right else "right", va="top", fontsize="x-small",
                        color=color)
            marked += 1
    # The identity rollout depends on the test problems alone, so every evaluation shares it.
    ax.plot(layers, values(first["identity_rollout"][field]), color="k", lw=1.0, ls="-.")
    ax.axhline(first["threshold"], color="tab:red", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer k (teacher steps emulated)")
    ax.set_ylabel(f"normalized error, {field}")
    ax.set_title(f"{metrics.get('recipe', '')} {field}: error vs depth".strip())
    if legend:
        stacks, kinds = legends(metrics)
        top = ax.legend(handles=stacks, fontsize="x-small", loc="upper left",
                        bbox_to_anchor=(1.01, 1.0), title="stack", title_fontsize="x-small")
        ax.add_artist(top).set_clip_on(False)  # add_artist clips to the axes otherwise
        ax.legend(handles=kinds, fontsize="x-small", loc="lower left", bbox_to_anchor=(1.01, 0.0),
                  title="error (median, 10-90%)", title_fontsize="x-small")
    return fig, ax


def plot_run_depth_errors(metrics: dict) -> Figure:
    """One panel per learned field, up to three a row, and one key for all of them."""
    fields = next(iter(evaluations(metrics).values()))["fields"]
    cols = min(3, len(fields))
    rows = -(-len(fields) // cols)
    fig = Figure(figsize=(5.5 * cols + 2.5, 3.6 * rows), layout="constrained")
    for ax, field in zip(fig.subplots(rows, cols, squeeze=False).flat, fields, strict=False):
        plot_depth_errors(metrics, field, ax=ax, legend=False)
    for ax in fig.axes[len(fields):]:
        ax.set_visible(False)
    stacks, kinds = legends(metrics)
    fig.legend(handles=stacks, loc="outside right upper", fontsize="small", title="stack")
    fig.legend(handles=kinds, loc="outside right lower", fontsize="small",
               title="error (median, 10-90%)")
    return fig
