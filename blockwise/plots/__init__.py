"""Plots: each function draws on an Axes (made if not given) and returns (figure, axes).

Library code never touches pyplot's global state: figures are `matplotlib.figure.Figure`
objects, saved with `save`, so nothing needs a display and nothing leaks. The figures of a run
or checkpoint directory, as `blockwise plot` writes them, are `blockwise.plots.runs.plot_runs`
(kept out of this namespace: it loads checkpoints and rolls out test problems, which drawing a
metrics dict does not need).
"""

from blockwise.plots.compare import plot_compare
from blockwise.plots.depth import plot_depth_errors
from blockwise.plots.errors import plot_block_errors, plot_pretrain_errors
from blockwise.plots.progress import plot_objective_depth, plot_progress_ratio
from blockwise.plots.stack_trajectory import plot_stack_trajectories
from blockwise.plots.teacher import plot_objective, plot_trajectory, save

__all__ = [
    "plot_block_errors", "plot_compare", "plot_depth_errors", "plot_objective",
    "plot_objective_depth", "plot_pretrain_errors", "plot_progress_ratio",
    "plot_stack_trajectories", "plot_trajectory", "save",
]
