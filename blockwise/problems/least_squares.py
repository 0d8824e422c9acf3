"""In-context least squares, the setting of von Oswald et al. 2023 (ICML), Sec. 2 and 3.

Each instance is a regression task with N context pairs: x_i ~ U(-r/2, r/2)^d, a teacher weight
w* ~ N(0, w_scale^2 I), labels y_i = w*.x_i + noise * N(0, 1). The search space is the weight
vector w (n = d) and f(w) = (1/2N) sum_i (w.x_i - y_i)^2, so one GD step from w = 0 with rate
eta is dw = (eta/N) sum_i y_i x_i (their Prop. 1). The reference code draws x from U(-0.5, 0.5)
(input_range = 1, `src/config.py`), although the paper text says U(-1, 1); hence the setting.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from blockwise import random
from blockwise.problems.base import Frame, Problem, check_number, check_points

MAX_CONTEXT = 4096  # pairs per task: each is a token, and validation builds one task


class LeastSquares(Problem):
    """Settings: n_context (N pairs per task), input_range (r: x ~ U(-r/2, r/2)^d),
    w_scale (std of w*), noise (label noise std)."""

    family = "least_squares"
    defaults = {"n_context": 10, "input_range": 1.0, "w_scale": 1.0, "noise": 0.0}

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        check_number("least_squares", "n_context", settings["n_context"], 1, integer=True)
        if settings["n_context"] > MAX_CONTEXT:
            raise ValueError(
                f"least_squares: n_context must be at most {MAX_CONTEXT} (one token per pair), "
                f"got {settings['n_context']}"
            )
        for name in ("input_range", "w_scale", "noise"):
            check_number("least_squares", name, settings[name], 0)

    @classmethod
    def sample_params(cls, keys: Tensor, dim: int, settings: dict[str, Any]) -> dict[str, Tensor]:
        n_ctx, r = settings["n_context"], settings["input_range"]
        x = (random.uniform(random.fold(keys, 0), (n_ctx + 1, dim)) - 0.5) * r
        w = random.normal(random.fold(keys, 1), (dim,)) * settings["w_scale"]
        eps = random.normal(random.fold(keys, 2), (n_ctx + 1,)) * settings["noise"]
        y = (x * w[:, None, :]).sum(-1) + eps
        # The last pair is the query (x_q, y_q): the network predicts y_q, never sees it.
        return {
            "x": x[:, :-1],
            "y": y[:, :-1],
            "x_query": x[:, -1],
            "y_query": y[:, -1],
            "w_true": w,
        }

    def evaluate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        residual = x @ p["x"].transpose(-1, -2) - p["y"][:, None, :]  # (B, m, N)
        return 0.5 * (residual**2).mean(-1)

    def gradient(self, x: Tensor) -> Tensor:
        """Closed form: (1/N) sum_i (w.x_i - y_i) x_i, shape (B, m, n)."""
        check_points(x, self.batch_size, self.dim, self.family)
        p = self._params_like(x)
        residual = x @ p["x"].transpose(-1, -2) - p["y"][:, None, :]  # (B, m, N)
        return residual @ p["x"] / p["x"].shape[1]

    def problem_tokens(self, frame: Frame | None = None) -> dict[str, Tensor]:
        """context (N tokens [x_i', y_i']) and value_scales (1 token: curvature, offset), so
        g(w') = curvature (1/2N) sum (w'.x_i' - y_i')^2 + offset. The query pair is not a token:
        the step optimizes w, not a prediction.

        Since w.x_i = centre.x_i + (L w').x_i = centre.x_i + w'.(L^T x_i): in a scale frame
        x_i' = x_i and y_i' = (y_i - centre.x_i) / scale, with curvature scale^2 / f_scale; in
        an affine frame x_i' = E^T x_i and y_i' = y_i - centre.x_i, with curvature 1 / f_scale.
        """
        frame = frame or Frame.identity(self.batch_size, self.dim, self.params_dtype)
        x, y = self.params["x"], self.params["y"]
        residual = y - (x * frame.centre[:, None, :]).sum(-1)  # (B, N)
        offset = -frame.f_shift / frame.f_scale
        if frame.affine:
            value_scales = torch.stack([1 / frame.f_scale, offset], -1)[:, None, :]
            context = torch.cat([x @ frame.edges, residual[..., None]], -1)
        else:
            value_scales = frame.value_scales()
            context = torch.cat([x, (residual / frame.scale[:, None])[..., None]], -1)
        return {"context": context, "value_scales": value_scales}

    def sample_x0(
        self, seed: int, radius: float = 2.0, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        """Starting weights U(-radius, radius)^d around 0, not around the answer: w* is what
        the task hides (von Oswald et al. start GD at W_0 = 0)."""
        keys = random.fold(random.key(seed), torch.arange(self.batch_size))
        return ((2 * random.uniform(keys, (self.dim,)) - 1) * radius).to(dtype)

    def minimizer(self) -> Tensor:
        """The minimum-norm least-squares solution (w* itself when noise = 0 and N >= d)."""
        return torch.linalg.lstsq(self.params["x"], self.params["y"][..., None]).solution[..., 0]
