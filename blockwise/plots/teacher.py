"""Plots of teacher rollouts: a 2-D trajectory over contours, and f vs step over a batch."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, Polygon

from blockwise.files import write_atomic
from blockwise.problems import Objective, evaluate
from blockwise.rollout import Trajectory
from blockwise.teachers import Teacher


def _axes(ax: Axes | None, size: tuple[float, float] = (4.0, 3.5)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def save(fig: Figure, path: str | Path) -> list[Path]:
    """Write `fig` as PNG and PDF beside each other (path without suffix); return both paths.
    Each file appears whole or not at all (`files.write_atomic`). Every figure here lays itself
    out (layout="constrained", outside legends included), so no bbox_inches="tight": its extra
    draw was a third of a run's figure time."""
    path = Path(path)
    out = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in out:
        write_atomic(p, lambda tmp, kind=p.suffix[1:]: fig.savefig(tmp, format=kind, dpi=150))
    return out


def contours(
    ax: Axes,
    objective: Objective,
    index: int,
    batch: int,
    points: torch.Tensor,
    device: torch.device | str = "cpu",
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Light contours of problem `index`'s objective over a square window around the finite
    `points` (N, 2); returns the window's (xlim, ylim).

    The window is square so that, at equal aspect, the contours fill the axes. `objective` is
    batched (B = `batch` problems), so the grid goes to every problem and row `index` is kept:
    the one call that works for a Problem and a plain callable alike.
    """
    points = points[torch.isfinite(points).all(-1)]
    lo, hi = points.min(0).values, points.max(0).values
    centre, half = (lo + hi) / 2, 0.75 * (hi - lo).max().clamp_min(1e-3)
    gx = torch.linspace(float(centre[0] - half), float(centre[0] + half), 120, dtype=torch.float64)
    gy = torch.linspace(float(centre[1] - half), float(centre[1] + half), 120, dtype=torch.float64)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    grid = torch.stack([xx, yy], -1).reshape(1, -1, 2)
    zz = evaluate(objective, grid.expand(batch, -1, -1).to(device))[index].reshape(xx.shape).cpu()
    levels = torch.quantile(zz.flatten(), torch.linspace(0.0, 0.9, 14, dtype=torch.float64))
    ax.contour(
        xx.numpy(),
        yy.numpy(),
        zz.numpy(),
        levels=torch.unique(levels).numpy(),
        colors="0.75",
        linewidths=0.6,
    )
    return (float(gx[0]), float(gx[-1])), (float(gy[0]), float(gy[-1]))


def covariance_ellipse(mean: torch.Tensor, sigma: torch.Tensor, C: torch.Tensor) -> Ellipse:
    """The 1-sigma ellipse of N(mean, sigma^2 C) in 2-D, unstyled.

    C is symmetrized and its eigenvalues clamped at 0, and |sigma| taken, so that an emulated
    state (a network's output, not quite a covariance) still draws as the ellipse it is near.
    """
    vals, vecs = torch.linalg.eigh((C + C.T) / 2)
    minor, major = (sigma.abs() * vals.clamp_min(0).sqrt()).tolist()
    angle = float(torch.rad2deg(torch.atan2(vecs[1, 1], vecs[0, 1])))  # the major axis
    return Ellipse(mean.tolist(), 2 * major, 2 * minor, angle=angle)


def plot_trajectory(
    objective: Objective,
    teacher: Teacher,
    trajectory: Trajectory,
    index: int = 0,
    steps: list[int] | None = None,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Problem `index`'s trajectory of `teacher` over the contours of its objective (2-D
    problems only).

    Draws each state as the teacher declares it (`Teacher.points`, `outline`, `spread`):
    simplices (Nelder-Mead), the mean with its 1-sigma covariance ellipse (CMA-ES), or the
    iterate's path (gradient teachers), at the chosen `steps` (default: about eight spread over
    the rollout), lighter for earlier steps.
    """
    states = {
        name: value[:, index].detach().double().cpu() for name, value in trajectory.states.items()
    }
    pts = teacher.drawn_points(states)  # (K+1, m, n): the steps of one problem as its batch
    if pts.shape[-1] != 2:
        raise ValueError(f"plot_trajectory draws 2-D problems; this one has n = {pts.shape[-1]}")
    k_max = pts.shape[0] - 1
    steps = (
        steps
        if steps is not None
        else sorted(set(torch.linspace(0, k_max, 8).round().int().tolist()))
    )
    fig, ax = _axes(ax)
    batch = trajectory.diverged.shape[1]
    device = next(iter(trajectory.states.values())).device
    contours(ax, objective, index, batch, pts.reshape(-1, 2), device)

    colors = [(0.1, 0.3, 0.8, 0.25 + 0.75 * i / max(len(steps) - 1, 1)) for i in range(len(steps))]
    for k, color in zip(steps, colors, strict=True):
        if teacher.outline:
            ax.add_patch(Polygon(pts[k].numpy(), closed=True, fill=False, edgecolor=color, lw=1.0))
        elif pts.shape[1] > 1:  # a population: its points, apart
            ax.plot(*pts[k].numpy().T, ls="none", marker=".", ms=3, color=color)
        if teacher.spread is not None:
            scale, cov = (states[f][k] for f in teacher.spread)
            if torch.isfinite(cov).all() and torch.isfinite(scale):  # a diverged row draws none
                ellipse = covariance_ellipse(pts[k, 0], scale, cov)
                ellipse.set(fill=False, edgecolor=color, lw=1.0)
                ax.add_patch(ellipse)
    path = teacher.incumbent(states)  # (K+1, n)
    ax.plot(path[:, 0].numpy(), path[:, 1].numpy(), "-", color="tab:red", lw=0.8, ms=2, marker=".")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal", adjustable="datalim")
    return fig, ax


def plot_objective(
    objective: Objective,
    teacher: Teacher,
    trajectory: Trajectory,
    f_min: torch.Tensor | None = None,
    ax: Axes | None = None,
    label: str | None = None,
) -> tuple[Figure, Axes]:
    """f at the teacher's incumbent vs step: median over problems with a 10-90% band, log scale.

    With `f_min` (B,), plots the gap f - f_min; diverged problems are left out from the step
    they diverged.
    """
    fig, ax = _axes(ax)
    values = []
    for k in range(len(trajectory)):
        x = teacher.incumbent(trajectory[k])
        values.append(evaluate(objective, x[:, None, :])[:, 0])
    f = torch.stack(values).detach().double().cpu()  # (K+1, B)
    if f_min is not None:
        f = (f - f_min.double().cpu()).clamp_min(1e-300)
    f = f.masked_fill(trajectory.diverged.cpu(), float("nan"))
    q = torch.nanquantile(f, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=1)
    steps = torch.arange(f.shape[0]).numpy()
    line = ax.plot(steps, q[1].numpy(), label=label or teacher.name)[0]
    ax.fill_between(steps, q[0].numpy(), q[2].numpy(), color=line.get_color(), alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("step k")
    ax.set_ylabel("f - f* (median, 10-90%)" if f_min is not None else "f (median, 10-90%)")
    return fig, ax
