"""Shifted Rosenbrock: f(x) = sum_{i<n} 100 (z_{i+1} - z_i^2)^2 + (1 - z_i)^2, z = x - x* + 1.

With shift = 0 (the default) every instance is the classic function, minimum at x = 1.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from blockwise import random
from blockwise.problems.base import Problem, check_number


class Rosenbrock(Problem):
    """Settings: shift (half-width of the box the minimizer x* is drawn from, around 1)."""

    family = "rosenbrock"
    defaults = {"shift": 0.0}

    @classmethod
    def min_dim(cls) -> int:
        return 2

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        check_number("rosenbrock", "shift", settings["shift"], 0)

    @classmethod
    def sample_params(cls, keys: Tensor, dim: int, settings: dict[str, Any]) -> dict[str, Tensor]:
        u = random.uniform(random.fold(keys, 0), (dim,))
        return {"x_opt": 1 + (2 * u - 1) * settings["shift"]}

    def evaluate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        z = x - p["x_opt"][:, None, :] + 1
        head, tail = z[..., :-1], z[..., 1:]
        return (100 * (tail - head**2) ** 2 + (1 - head) ** 2).sum(-1)

    def minimizer(self) -> Tensor:
        return self.params["x_opt"]
