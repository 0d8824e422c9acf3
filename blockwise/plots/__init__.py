"""Plots: each function draws on an Axes (made if not given) and returns (figure, axes).

Library code never touches pyplot's global state: figures are `matplotlib.figure.Figure`
objects, saved with `save`, so nothing needs a display and nothing leaks.
"""

from blockwise.plots.errors import plot_block_errors, plot_pretrain_errors
from blockwise.plots.teacher import plot_objective, plot_trajectory, save

__all__ = [
    "plot_block_errors", "plot_objective", "plot_pretrain_errors", "plot_trajectory", "save",
]
