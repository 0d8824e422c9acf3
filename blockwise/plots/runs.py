"""`blockwise plot DIR [DIR ...]`: the figures of finished runs, from their directories alone.

One run gets DIR/plots/depth_errors (one panel per learned field), DIR/plots/objective and, when
the run saved a stack (DIR/checkpoint) of a 2-D problem, DIR/plots/trajectories; several runs
get one comparison figure. Everything but the trajectories comes from metrics.json, so no
model or GPU is needed; the trajectories re-roll the test problems from the run's recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from blockwise.checkpoints import load_stack
from blockwise.config import recipe_from_dict, saved_recipe
from blockwise.plots.compare import plot_compare
from blockwise.plots.depth import plot_run_depth_errors
from blockwise.plots.progress import plot_objective_depth
from blockwise.plots.stack_trajectory import plot_stack_trajectories
from blockwise.plots.teacher import save
from blockwise.training.pretrain import data_splits
from blockwise.training.rollouts import load_or_roll_out

TRAJECTORY_PANELS = 3  # test problems shown side by side


def read_metrics(run: Path) -> dict:
    """A run directory's metrics.json; the ValueError names the directory if it has none."""
    path = run / "metrics.json"
    if not path.is_file():
        what = "holds no metrics.json" if run.is_dir() else "is not a directory"
        raise ValueError(f"{run} {what}: not a finished blockwise run")
    return json.loads(path.read_text())


def trajectories(run: Path) -> Figure | None:
    """The teacher's and the saved stack's trajectories on the first test problems, or None
    when the run saved no stack or its problems are not 2-D."""
    checkpoint = run / "checkpoint"
    if not checkpoint.is_dir():
        return None
    recipe = recipe_from_dict(saved_recipe(yaml.safe_load((run / "recipe.yaml").read_text())))
    if recipe.problem.dim != 2:
        return None
    # The test split alone: the training splits (far larger) are not needed to plot.
    problem, traj = load_or_roll_out(data_splits(recipe)["test"], recipe.data.cache_dir, "cpu")
    stack = load_stack(checkpoint)
    panels = min(TRAJECTORY_PANELS, problem.batch_size)
    fig = Figure(figsize=(4.2 * panels + 1.6, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for index, ax in enumerate(axes):
        plot_stack_trajectories(stack, problem, traj, index=index, ax=ax)
        ax.set_title(f"problem {index}", fontsize="medium")  # the figure's title says the rest
        if index < panels - 1:
            ax.get_legend().remove()  # the panels share one key: the last one's
    fig.suptitle(f"{recipe.name}: teacher (solid) and stack (dashed) on test problems")
    return fig


def plot_run(run: Path, metrics: dict) -> list[Path]:
    """One run's figures under run/plots; returns the written paths. depth_errors comes last:
    it marks a finished run (pipeline.finished)."""
    out = run / "plots"
    paths = save(plot_objective_depth(metrics)[0], out / "objective")
    fig = trajectories(run)
    if fig is not None:
        paths += save(fig, out / "trajectories")
    return paths + save(plot_run_depth_errors(metrics), out / "depth_errors")


def run_names(metrics: dict[Path, dict]) -> dict[Path, str]:
    """Each run's recipe name, or its directory where two runs share a name."""
    names = {run: m.get("recipe") or run.name for run, m in metrics.items()}
    taken = list(names.values())
    return {run: name if taken.count(name) == 1 else str(run) for run, name in names.items()}


def plot_runs(dirs: list[str | Path], out: str | Path | None = None) -> list[Path]:
    """The figures of one run (under DIR/plots), or one comparison of several written to
    `out` (default ./compare; PNG and PDF). Returns the written paths."""
    runs = [Path(d) for d in dirs]
    if not runs:
        raise ValueError("plot_runs: give at least one run directory")
    metrics = {run: read_metrics(run) for run in runs}  # every directory checked before drawing
    if len(runs) == 1:
        return plot_run(runs[0], metrics[runs[0]])
    names = run_names(metrics)
    fig, _ = plot_compare({names[run]: m for run, m in metrics.items()})
    return save(fig, Path(out) if out is not None else Path.cwd() / "compare")
