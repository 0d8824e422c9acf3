"""Where an incumbent stands: the best value f* and the optimality gap f - f*.

A leaf below training and evaluation, which both need it: evaluation reports the gap and the
progress ratio per layer, and fine-tuning's `optimize` objective minimizes the gap.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from blockwise.problems import Problem, evaluate
from blockwise.rollout import Trajectory
from blockwise.teachers import State, Teacher

TINY = 1e-300  # the floor of an optimality gap, so that its log is finite


def f_at(problem: Problem, x: Tensor) -> Tensor:
    """f at one point per problem, x (B, n) -> (B,)."""
    return evaluate(problem, x[:, None, :])[:, 0]


def optimum(problem: Problem, teacher: Teacher, traj: Trajectory) -> Tensor:
    """f* (B,): f at the family's known minimizer, else the smallest f the teacher reached at
    its incumbents of s_0..s_K."""
    first = teacher.incumbent(traj[0])
    x_star = problem.minimizer()
    if x_star is not None:
        return f_at(problem, x_star.to(first))
    points = torch.stack([teacher.incumbent(traj[k]) for k in range(len(traj))], dim=1)
    return evaluate(problem, points).amin(dim=1)  # points (B, K+1, n)


def objective_gap(problem: Problem, teacher: Teacher, state: State, f_star: Tensor) -> Tensor:
    """(B,) f(incumbent) - f*, at least 1e-300; inf where f is not finite (a blow-up)."""
    f = f_at(problem, teacher.incumbent(state))
    return torch.where(f.isfinite(), (f - f_star).clamp(min=TINY), math.inf)
