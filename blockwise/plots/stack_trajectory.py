"""The teacher's and the stack's trajectories on one 2-D problem, over its objective's contours.

Both start from the teacher's s_0; the stack's states are its layers' decoded outputs. At a few
chosen layers each state is drawn as its teacher declares it (`Teacher.points`, `outline`,
`spread`: a Nelder-Mead simplex, a CMA-ES mean with its 1-sigma ellipse, a gradient teacher's
iterate), the teacher's solid and the stack's dashed, one colour per layer; between them the
incumbents' paths run through every layer.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon

from blockwise.plots.teacher import _axes, contours, covariance_ellipse
from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.teachers import State, Teacher


def _points(teacher: Teacher, state: State) -> torch.Tensor:
    """The points (m, 2) one problem's state (no batch dim) is drawn by."""
    return teacher.drawn_points({f: v[None] for f, v in state.items()})[0]


def _draw_state(ax: Axes, teacher: Teacher, state: State, color, ls: str) -> None:
    points = _points(teacher, state)
    if not torch.isfinite(points).all():
        return  # a diverged emulation has nothing to show at this layer
    if teacher.outline:
        ax.add_patch(Polygon(points.numpy(), closed=True, fill=False, edgecolor=color, ls=ls,
                             lw=1.2))
        return
    marker = "o" if ls == "-" else "s"
    ax.plot(*points.numpy().T, marker=marker, ms=5, color=color, mfc=color if ls == "-" else
            "none", ls="none")
    if teacher.spread is not None:
        scale, cov = (state[f] for f in teacher.spread)
        if torch.isfinite(cov).all() and torch.isfinite(scale):
            ellipse = covariance_ellipse(points[0], scale, cov)
            ellipse.set(fill=False, edgecolor=color, ls=ls, lw=1.2)
            ax.add_patch(ellipse)


def plot_stack_trajectories(
    stack,
    problem: Problem,
    traj: Trajectory,
    index: int = 0,
    layers: list[int] | None = None,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Problem `index`'s teacher trajectory and the stack's rollout from the same s_0.

    Args:
        stack: a `blockwise.stack.Stack` for the teacher and problem family of `traj`.
        problem: the problems `traj` was rolled out on (B of them).
        traj: the teacher's trajectory, at least as many steps as the stack has layers.
        layers: the layers whose states are drawn (default: about four spread over 1..L).
    """
    if problem.dim != 2:
        raise ValueError(f"plot_stack_trajectories draws 2-D problems; this one has n = "
                         f"{problem.dim}")
    with torch.no_grad():
        emulated = stack(problem, traj[0])
    depth = min(len(emulated), traj.steps)
    if layers is None:
        layers = sorted({int(k) for k in np.linspace(1, depth, min(4, depth)).round()})
    if not all(1 <= k <= depth for k in layers):
        raise ValueError(f"layers {list(layers)} must lie in 1..{depth}")

    def pick(state: State) -> State:
        return {f: v[index].detach().double().cpu() for f, v in state.items()}

    teacher = [pick(traj[k]) for k in range(depth + 1)]
    stacked = [teacher[0]] + [pick(s) for s in emulated[:depth]]

    fig, ax = _axes(ax, (5.5, 4.2))
    optimizer = stack.codec.teacher
    drawn = torch.cat([_points(optimizer, s) for s in teacher + [stacked[k] for k in layers]])
    device = next(iter(traj.states.values())).device
    xlim, ylim = contours(ax, problem, index, problem.batch_size, drawn, device)

    incumbent = optimizer.incumbent
    for states, ls, name in ((teacher, "-", "teacher"), (stacked, "--", "stack")):
        path = torch.stack([incumbent({f: v[None] for f, v in s.items()})[0] for s in states])
        ax.plot(*path.numpy().T, ls=ls, color="0.2", lw=0.9, label=f"{name}'s incumbent")
    start = incumbent({f: v[None] for f, v in teacher[0].items()})[0]
    ax.plot(*start.numpy(), "k*", ms=9, ls="none", label="start $s_0$")

    colors = colormaps["plasma"](np.linspace(0.0, 0.8, len(layers)))
    for k, color in zip(layers, colors, strict=True):
        _draw_state(ax, optimizer, teacher[k], color, "-")
        _draw_state(ax, optimizer, stacked[k], color, "--")

    handles = ax.get_legend_handles_labels()[0]
    handles += [Line2D([], [], color=c, lw=2, label=f"layer {k}") for k, c in zip(layers, colors,
                                                                                    strict=True)]
    ax.legend(handles=handles, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    # The contours' window, not the states': an emulated CMA ellipse may be far larger.
    ax.set(xlim=xlim, ylim=ylim)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(f"problem {index}: teacher solid, stack dashed", fontsize="medium")
    return fig, ax
