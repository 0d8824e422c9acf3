"""Figures of `blockwise probe`, drawn from its results dict (probes.json) alone, except the
counterfactual's contours, which need the two objectives.

    probe_scores     per quantity: held-out R^2 (classes: skill, 0 = always the commonest
                     class, 1 = always right) against layer, per site, beside its controls
                     (the layers probed; a log scale where they are spaced so)
    attention        per layer and head: the mean attention map (query rows, key columns)
    counterfactual   retarget against layer; for 2-D problems, the incumbents' paths over the
                     new objective's contours
    similarity       blocks interchanged between steps, linear CKA and weight cosine, trained
                     and untrained
    ood              the progress ratio against layer, per out-of-distribution condition
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from blockwise.plots.teacher import contours, save
from blockwise.problems import Problem

SITES = {  # site -> (label, colour); the slots (layer input) are the grey baseline
    "stream": ("whole stream", "tab:orange"),
    "beyond_slots": ("beyond the slots", "tab:blue"),
    "heads": ("heads' outputs", "tab:green"),
}


def _float(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _series(entry: dict, site: str) -> dict[str, np.ndarray] | None:
    """A quantity's R^2 (classes: skill) at a site, per layer, and its controls'."""
    scores = entry.get(site)
    if scores is None:
        return None
    key = "r2" if entry["kind"] == "quantity" else "skill"
    return {name: _float(scores[prefix + key]) if prefix + key in scores else None
            for name, prefix in (("score", ""), ("control", "control_"),
                                 ("shuffled", "shuffled_"))}


def _layer_axis(ax, layers: list[int]) -> None:
    """Ticks at the given layers; a log2 scale where they are not consecutive (the default
    choice for a deep stack: 1, 2, 4, ..., the last)."""
    if layers != list(range(layers[0], layers[-1] + 1)):
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(layers, [str(k) for k in layers])


def plot_probe_scores(results: dict) -> Figure:
    """One panel per probed quantity: the trained stack solid, the untrained dashed, the
    shuffled-label control dotted, the layer's input slots grey."""
    names = [n for n, e in results["probes"].items()
             if any(c is None for c in e["constant_in_frame"])]
    cols = min(3, max(len(names), 1))
    rows = -(-len(names) // cols) if names else 1
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).flatten()
    x = np.array(results["layers"])
    for ax, name in zip(axes, names, strict=False):
        entry = results["probes"][name]
        base = _series(entry, "input")
        if base is not None:
            ax.plot(x, base["score"], color="0.5", lw=1.2, marker=".",
                    label="slots (layer input)")
        for site, (label, color) in SITES.items():
            s = _series(entry, site)
            if s is None:
                continue
            ax.plot(x, s["score"], color=color, marker="o", ms=3, label=label)
            for control, ls, what in (("control", "--", "untrained"),
                                      ("shuffled", ":", "shuffled labels")):
                if s[control] is not None:
                    ax.plot(x, s[control], color=color, ls=ls, lw=1, label=what)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("layer")
        ax.set_ylabel("held-out R$^2$" if entry["kind"] == "quantity" else "skill over chance")
        ax.set_ylim(-0.15, 1.05)
        _layer_axis(ax, results["layers"])
        ax.axhline(0, color="0.8", lw=0.6)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if names:
        handles, labels = axes[0].get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncols=4,
                   fontsize="small")
    fig.suptitle(f"{results['name']}: linear probes (solid trained, dashed untrained, dotted "
                 "shuffled labels)")
    return fig


def plot_attention(results: dict) -> Figure:
    """The trained stack's mean attention maps: one row per probed layer, its heads side by
    side, each a query (row) by key (column) map over the same tokens."""
    maps = np.array(results["attention"]["maps"]["trained"], dtype=float)  # (L, H, T, T)
    tokens = results["stack"]["tokens"]
    layers, heads, count = maps.shape[:3]
    gap = np.full((layers, count, 1), np.nan)
    rows = [np.concatenate([x for h in range(heads) for x in (maps[k, h], gap[k])][:-1], 1)
            for k in range(layers)]
    fig = Figure(figsize=(0.32 * (heads * (count + 1)) + 1.8, 0.3 * count * layers + 1.2),
                 layout="constrained")
    axes = fig.subplots(layers, 1, squeeze=False)[:, 0]
    image = None
    for k, ax in enumerate(axes):
        image = ax.imshow(rows[k], vmin=0, vmax=1, cmap="viridis")
        ax.set_yticks(range(count), tokens, fontsize=5)
        ax.set_ylabel(f"layer {results['layers'][k]}", fontsize="small")
        if k == layers - 1:
            ax.set_xticks(range(heads * (count + 1) - 1),
                          [t for _ in range(heads) for t in (*tokens, "")][:-1],
                          rotation=90, fontsize=5)
        else:
            ax.set_xticks([])
        if k == 0:
            for h in range(heads):
                ax.text(h * (count + 1) + (count - 1) / 2, -0.9, f"head {h}", ha="center",
                        fontsize="small")
    what = ("share of |q.k| (linear attention)" if results["attention"]["kind"] == "linear"
            else "softmax weight")
    fig.colorbar(image, ax=axes, shrink=0.8, label=what)
    fig.suptitle(f"{results['name']}: mean attention, query (row) to key (column)",
                 fontsize="medium")
    return fig


def plot_counterfactual(results: dict, problem: Problem | None = None,
                        other: Problem | None = None) -> Figure:
    """retarget per layer after the swap; with the 2-D objectives, problem 0's paths over the
    new objective's contours."""
    cf = results["counterfactual"]
    draw_paths = other is not None and other.dim == 2
    fig = Figure(figsize=(8.4 if draw_paths else 4.2, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if draw_paths else 1, squeeze=False)[0]
    ax = axes[0]
    ax.plot(cf["layer"], _float(cf["retarget"]), marker="o", label="objective swapped")
    ax.plot(cf["layer"], _float(cf["control"]), marker="s", ls="--", color="0.5",
            label="not swapped (control)")
    ax.axhline(1, color="tab:green", lw=0.8, label="teacher restarted on the new objective")
    ax.axhline(0, color="0.8", lw=0.8)
    if len(cf["layer"]) <= 16:  # past that, matplotlib's own ticks stay legible
        ax.set_xticks(cf["layer"])
    ax.set_xlabel("layer")
    ax.set_ylabel("retarget (median)")
    ax.legend(fontsize="small")
    ax.set_title(f"swap at layer {cf['swap_layer']}", fontsize="medium")
    if draw_paths:
        ax = axes[1]
        paths = {name: torch.tensor(p[0], dtype=torch.float64) for name, p in cf["paths"].items()}
        # Problem 0 alone: the contour grid goes to every problem of a batch it is given.
        old, new = problem[0], other[0]
        minima = [m[0].double() for m in (old.minimizer(), new.minimizer()) if m is not None]
        points = torch.cat([*paths.values(), *(m[None] for m in minima)])
        contours(ax, new, 0, 1, points[torch.isfinite(points).all(-1)])
        looks = {"before": ("stack before the swap", "0.3", "-"),
                 "swapped": ("stack, swapped", "tab:blue", "-"),
                 "kept": ("stack, not swapped", "tab:blue", ":"),
                 "teacher_new": ("teacher on the new objective", "tab:green", "-"),
                 "teacher_old": ("teacher on the old objective", "tab:red", ":")}
        for name, (label, color, ls) in looks.items():
            p = paths[name].numpy()
            ax.plot(p[:, 0], p[:, 1], ls=ls, color=color, marker=".", ms=4, label=label)
        labels = ["old minimum", "new minimum"] if len(minima) == 2 else []
        for m, label, marker in zip(minima, labels, ("x", "*"), strict=False):
            ax.plot(*m.numpy(), marker=marker, color="k", ms=8, ls="none", label=label)
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize="x-small")
        ax.set_title("problem 0, over the new objective", fontsize="medium")
    fig.suptitle(f"{results['name']}: counterfactual objective")
    return fig


def plot_similarity(results: dict) -> Figure:
    """Blocks interchanged (teacher-forced error of block l on step k, log colour), CKA on
    shared inputs and weight cosine: trained above, untrained below; the probed layers'."""
    sim = results["similarity"]
    blocks = [str(k) for k in sim["blocks_of_layers"]]
    panels = [("CKA, shared inputs", sim["same_inputs"], Normalize(0, 1)),
              ("weight cosine", {w: sim["blocks"][w]["weights"] for w in sim["blocks"]},
               Normalize(-1, 1))]
    if not sim["looped"]:
        values = _float([v for who in sim["interchange"].values() for row in who for v in row])
        values = values[np.isfinite(values) & (values > 0)]
        low = values.min() / 2 if values.size else 1e-8
        high = max(values.max() if values.size else 1.0, 1.0, 10 * low)
        panels.insert(0, ("block on step, error", sim["interchange"], LogNorm(low, high)))
    fig = Figure(figsize=(3.3 * len(panels), 6), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (title, data, norm) in enumerate(panels):
        image = None
        for row, who in enumerate(("trained", "control")):
            ax = axes[row, col]
            m = np.array(data[who], dtype=float)
            image = ax.imshow(m, norm=norm, cmap="magma")
            steps = "step" in title
            ax.set_xticks(range(m.shape[1]), blocks)
            ax.set_yticks(range(m.shape[0]),
                          [str(k) for k in results["layers"]] if steps else blocks)
            ax.set_xlabel("block of layer")
            ax.set_ylabel("step" if steps else "block of layer")
            ax.set_title(f"{title}, {'trained' if who == 'trained' else 'untrained'}",
                         fontsize="small")
            if m.size <= 100:
                for (i, j), v in np.ndenumerate(m):
                    ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6,
                            color="w" if norm(v) < 0.6 else "k")
        fig.colorbar(image, ax=axes[:, col], shrink=0.6)
    fig.suptitle(f"{results['name']}: layers alike?" + (" (looped: one block)"
                                                        if sim["looped"] else ""))
    return fig


def plot_ood(results: dict) -> Figure:
    """The median progress ratio against layer, per condition the stack could read."""
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for row in results["ood"]:
        if "skipped" in row:
            continue
        progress = _float(row["progress"])
        ax.plot(np.arange(1, len(progress) + 1), progress, marker="o", ms=3,
                label=row["condition"])
    ax.axhline(1, color="0.6", lw=0.8)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(results["stack"]["depth"], color="0.8", ls=":", lw=0.8)
    ax.set_xlabel("layer (past the dotted line the last block repeats)")
    ax.set_ylabel("progress ratio (median)")
    ax.legend(fontsize="x-small")
    ax.set_title(f"{results['name']}: out of distribution", fontsize="medium")
    return fig


def probe_figures(results: dict, problem: Problem, other: Problem, out: str | Path) -> list[Path]:
    """Every figure above under `out`, PNG and PDF; returns the paths."""
    out = Path(out)
    figures = {
        "probe_scores": plot_probe_scores(results),
        "attention": plot_attention(results),
        "counterfactual": plot_counterfactual(results, problem, other),
        "similarity": plot_similarity(results),
        "ood": plot_ood(results),
    }
    return [path for name, fig in figures.items() for path in save(fig, out / name)]
