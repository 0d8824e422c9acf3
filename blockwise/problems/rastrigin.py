"""Shifted Rastrigin: f(x) = A n + sum_i z_i^2 - A cos(2 pi z_i), z = x - x*."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from blockwise import random
from blockwise.problems.base import Problem, check_number


class Rastrigin(Problem):
    """Settings: amplitude (A, 10 in the classic function), shift (half-width for x*)."""

    family = "rastrigin"
    defaults = {"amplitude": 10.0, "shift": 1.0}

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        for name in ("amplitude", "shift"):
            check_number("rastrigin", name, settings[name], 0)

    @classmethod
    def sample_params(cls, keys: Tensor, dim: int, settings: dict[str, Any]) -> dict[str, Tensor]:
        u = random.uniform(random.fold(keys, 0), (dim,))
        return {"x_opt": (2 * u - 1) * settings["shift"]}

    def evaluate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        z = x - p["x_opt"][:, None, :]
        a = self.settings["amplitude"]
        return (z**2 - a * torch.cos(2 * math.pi * z)).sum(-1) + a * self.dim

    def minimizer(self) -> Tensor:
        return self.params["x_opt"]
