"""Shifted sphere: f(x) = ||x - x*||^2, with x* ~ U(-shift, shift)^n per instance."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from blockwise import random
from blockwise.problems.base import Frame, Problem, check_number


class Sphere(Problem):
    """Settings: shift (half-width of the box x* is drawn from; 0 puts x* at the origin)."""

    family = "sphere"
    defaults = {"shift": 1.0}

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        check_number("sphere", "shift", settings["shift"], 0)

    @classmethod
    def sample_params(cls, keys: Tensor, dim: int, settings: dict[str, Any]) -> dict[str, Tensor]:
        u = random.uniform(random.fold(keys, 0), (dim,))
        return {"x_opt": (2 * u - 1) * settings["shift"]}

    def evaluate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return ((x - p["x_opt"][:, None, :]) ** 2).sum(-1)

    def problem_tokens(self, frame: Frame | None = None) -> dict[str, Tensor]:
        """x_opt (1 token, in the frame) and value_scales (1 token: curvature, offset):
        g(x') = curvature ||x' - x_opt'||^2 + offset. In an affine frame the curvature is a
        matrix, so the tokens are a quadratic's (see `Quadratic.problem_tokens`) with A = I:
        A' = E^T E / f_scale (n tokens), x_opt', offset."""
        frame = frame or Frame.identity(self.batch_size, self.dim, self.params_dtype)
        x_opt = frame.points_to(self.params["x_opt"][:, None, :])
        if frame.affine:
            eye = torch.eye(self.dim, dtype=x_opt.dtype).expand(self.batch_size, -1, -1)
            offset = (-frame.f_shift / frame.f_scale)[:, None, None]
            return {"A": frame.curvature(eye), "x_opt": x_opt, "offset": offset}
        return {"x_opt": x_opt, "value_scales": frame.value_scales()}

    def minimizer(self) -> Tensor:
        return self.params["x_opt"]
