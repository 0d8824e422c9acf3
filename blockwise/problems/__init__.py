"""Objective families: batched, seeded problem instances. See `Problem` for the contract.

    >>> from blockwise import problems
    >>> p = problems.make("quadratic", batch=4, dim=2, seed=0, condition=100.0)
    >>> p(torch.zeros(4, 3, 2)).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from typing import Any

import torch  # noqa: F401  (used by the doctest above)

from blockwise.problems.base import Frame, Objective, Problem, check_points, evaluate, gradient
from blockwise.problems.least_squares import LeastSquares
from blockwise.problems.quadratic import Quadratic
from blockwise.problems.rastrigin import Rastrigin
from blockwise.problems.rosenbrock import Rosenbrock
from blockwise.problems.sphere import Sphere

REGISTRY: dict[str, type[Problem]] = {
    cls.family: cls for cls in (Sphere, Quadratic, Rosenbrock, Rastrigin, LeastSquares)
}


def make(family: str, batch: int, dim: int, seed: int, **settings: Any) -> Problem:
    """Sample `batch` instances of `family` in `dim` dimensions from `seed`."""
    if family not in REGISTRY:
        raise ValueError(f"unknown problem family {family!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[family].sample(batch, dim, seed, **settings)


__all__ = [
    "REGISTRY", "Frame", "Objective", "Problem", "check_points", "evaluate", "gradient", "make",
    "LeastSquares", "Quadratic", "Rastrigin", "Rosenbrock", "Sphere",
]
