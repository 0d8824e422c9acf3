"""`blockwise plot DIR [DIR ...]`: the figures of finished runs or saved stacks, from their
directories alone.

A DIR is a run directory (metrics.json, recipe.yaml, checkpoint/) or a checkpoint directory
(config.json and model.safetensors, such as the shipped checkpoints/quickstart). One DIR gets
depth_errors (one panel per learned field), objective and, when there is a saved stack of a 2-D
problem, trajectories: a run's under DIR/plots, a checkpoint's under `out` (default
./plots/<its name>), since a checkpoint directory holds its two files and nothing else. Several
DIRs get one comparison figure. Everything but the trajectories comes from the stored metrics
(a run's metrics.json, a checkpoint's config.json), so no model or GPU is needed; a checkpoint
saved without metrics is evaluated on fresh test problems (`eval_checkpoint`); the trajectories
re-roll the test problems from the recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from blockwise.build import data_splits
from blockwise.checkpoints import load_stack, read_config
from blockwise.config import Recipe, recipe_from_dict, saved_recipe
from blockwise.evaluation import eval_checkpoint
from blockwise.plots.compare import plot_compare
from blockwise.plots.depth import plot_run_depth_errors
from blockwise.plots.progress import plot_objective_depth
from blockwise.plots.stack_trajectory import plot_stack_trajectories
from blockwise.plots.teacher import save
from blockwise.rollout_cache import load_or_roll_out

TRAJECTORY_PANELS = 3  # test problems shown side by side
CONFIG = "config.json"  # what marks a checkpoint directory


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoint directory rather than a run (read_config checks it)."""
    return (path / CONFIG).exists()


def read_metrics(run: Path) -> dict:
    """A run directory's metrics.json; the ValueError names the directory if it has none."""
    path = run / "metrics.json"
    if not path.is_file():
        what = "holds no metrics.json" if run.is_dir() else "is not a directory"
        raise ValueError(
            f"{run} {what}: neither a finished blockwise run nor a checkpoint directory"
        )
    return json.loads(path.read_text())


def checkpoint_metrics(path: Path) -> dict:
    """A checkpoint's metrics as a run's metrics.json holds them: {"recipe": name,
    "evaluations": {its stage: its metrics}}; evaluated now if it was saved without."""
    config = read_config(path)
    metrics = config["metrics"] if config["metrics"] is not None else eval_checkpoint(path)
    return {"recipe": config["recipe"]["name"], "evaluations": {config["stage"]: metrics}}


def directory_metrics(path: Path) -> dict:
    """The metrics of a run or a checkpoint directory, in the run's shape."""
    return checkpoint_metrics(path) if is_checkpoint(path) else read_metrics(path)


def trajectories(recipe: Recipe, checkpoint: Path) -> Figure | None:
    """The teacher's and the saved stack's trajectories on the recipe's first test problems,
    or None when its problems are not 2-D."""
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
    it marks a finished run (rundir.finished)."""
    checkpoint, stack = run / "checkpoint", None
    if checkpoint.is_dir():
        saved = yaml.safe_load((run / "recipe.yaml").read_text())
        stack = (recipe_from_dict(saved_recipe(saved)), checkpoint)
    return plot_figures(metrics, stack, run / "plots")


def plot_checkpoint(path: Path, metrics: dict, out: Path) -> list[Path]:
    """A checkpoint directory's figures under `out`; returns the written paths."""
    recipe = recipe_from_dict(read_config(path)["recipe"])
    return plot_figures(metrics, (recipe, path), out)


def plot_figures(metrics: dict, stack: tuple[Recipe, Path] | None, out: Path) -> list[Path]:
    """objective, trajectories (for a saved stack (recipe, checkpoint directory) of a 2-D
    problem) and depth_errors under `out`."""
    paths = save(plot_objective_depth(metrics)[0], out / "objective")
    fig = trajectories(*stack) if stack is not None else None
    if fig is not None:
        paths += save(fig, out / "trajectories")
    return paths + save(plot_run_depth_errors(metrics), out / "depth_errors")


def run_names(metrics: dict[Path, dict]) -> dict[Path, str]:
    """Each run's recipe name, or its directory where two runs share a name."""
    names = {run: m.get("recipe") or run.name for run, m in metrics.items()}
    taken = list(names.values())
    return {run: name if taken.count(name) == 1 else str(run) for run, name in names.items()}


def plot_runs(dirs: list[str | Path], out: str | Path | None = None) -> list[Path]:
    """The figures of one run (under DIR/plots) or one checkpoint directory (under `out`,
    default ./plots/<its name>), or one comparison of several of either written to `out`
    (default ./compare; PNG and PDF). Returns the written paths."""
    paths = [Path(d) for d in dirs]
    if not paths:
        raise ValueError("plot_runs: give at least one run or checkpoint directory")
    metrics = {p: directory_metrics(p) for p in paths}  # every directory checked before drawing
    if len(paths) == 1:
        (one,) = paths
        if is_checkpoint(one):
            where = Path(out) if out is not None else Path.cwd() / "plots" / one.resolve().name
            return plot_checkpoint(one, metrics[one], where)
        return plot_run(one, metrics[one])
    names = run_names(metrics)
    fig, _ = plot_compare({names[p]: m for p, m in metrics.items()})
    return save(fig, Path(out) if out is not None else Path.cwd() / "compare")
