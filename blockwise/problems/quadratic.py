"""Rotated, shifted ellipsoid: f(x) = (x - x*)^T Q diag(lam) Q^T (x - x*).

lam_i = condition^((i-1)/(n-1)) (the BBOB ellipsoid's spectrum, Hansen et al. 2009), Q a Haar
rotation (QR of a Gaussian matrix with the signs of diag(R) folded in, Mezzadri 2007), and
x* ~ U(-shift, shift)^n, all per instance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from blockwise import random
from blockwise.problems.base import Frame, Problem, check_number


class Quadratic(Problem):
    """Settings: condition (largest / smallest eigenvalue, >= 1), rotate (False keeps the axes),
    shift (half-width of the box x* is drawn from)."""

    family = "quadratic"
    defaults = {"condition": 10.0, "rotate": True, "shift": 1.0}

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        check_number("quadratic", "condition", settings["condition"], 1)
        check_number("quadratic", "shift", settings["shift"], 0)
        if not isinstance(settings["rotate"], bool):
            raise ValueError(f"quadratic: rotate must be a bool, got {settings['rotate']!r}")

    @classmethod
    def sample_params(cls, keys: Tensor, dim: int, settings: dict[str, Any]) -> dict[str, Tensor]:
        batch = keys.shape[0]
        exponents = torch.arange(dim, dtype=torch.float64) / max(dim - 1, 1)
        eigvals = (settings["condition"] ** exponents).expand(batch, dim).clone()
        if settings["rotate"]:
            g = random.normal(random.fold(keys, 1), (dim, dim))
            q, r = torch.linalg.qr(g)
            rotation = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
        else:
            rotation = torch.eye(dim, dtype=torch.float64).expand(batch, dim, dim).clone()
        u = random.uniform(random.fold(keys, 0), (dim,))
        return {"x_opt": (2 * u - 1) * settings["shift"], "rotation": rotation, "eigvals": eigvals}

    def evaluate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return self._evaluate(x.permute(1, 2, 0).contiguous(), p).t().contiguous()

    def evaluate_batch_last(self, x: Tensor) -> Tensor:
        """f at points x (m, n, B), batch last, -> (m, B): `self(x.permute(2, 0, 1)).t()`, bit
        for bit, without the transposes (teachers that work batch last call this)."""
        if x.ndim != 3 or x.shape[1:] != (self.dim, self.batch_size):
            raise ValueError(
                f"quadratic: batch-last points must have shape (m, n={self.dim}, "
                f"B={self.batch_size}), got {tuple(x.shape)}"
            )
        return self._evaluate(x, self._params_like(x))

    def _evaluate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """f at points x (m, n, B) -> (m, B).

        Batch last, every operation is a vector operation over the B instances, where on
        (B, m, n) tensors torch would loop over rows of n (a few values) and multiply a batch
        of tiny matrices. Only elementwise operations, z_j = sum_i d_i Q_ij and
        sum_j lam_j z_j^2 added in index order: a point's value depends neither on the other
        points nor on the layout of x.
        """
        rotation, x_opt, eigvals = self._batch_last(p)
        d = (x - x_opt).unsqueeze(2).unbind(1)  # n times (m, 1, B)
        z = d[0] * rotation[0]  # (m, n, B): coordinates in Q's basis
        for i in range(1, self.dim):
            z += d[i] * rotation[i]
        w = z * z
        w *= eigvals
        w = w.unbind(1)
        f = w[0]
        for j in range(1, self.dim):
            f = f + w[j]
        return f

    def _batch_last(self, p: dict[str, Tensor]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """Q's rows (n times (n, B)), x* (n, B) and lam (n, B) from the parameters p, cached
        per p."""
        cache = self.__dict__.setdefault("_batch_last_cache", {})
        entry = cache.get(id(p))
        if entry is None or entry[0] is not p:  # an entry keeps its p, so ids are not reused
            names = ("rotation", "x_opt", "eigvals")
            rotation, x_opt, eigvals = (p[k].movedim(0, -1).contiguous() for k in names)
            entry = cache[id(p)] = (p, (rotation.unbind(0), x_opt, eigvals))
        return entry[1]

    def hessian_half(self) -> Tensor:
        """A = Q diag(lam) Q^T (B, n, n), so that f(x) = (x - x*)^T A (x - x*)."""
        q, lam = self.params["rotation"], self.params["eigvals"]
        return (q * lam[:, None, :]) @ q.transpose(-1, -2)

    def problem_tokens(self, frame: Frame | None = None) -> dict[str, Tensor]:
        """A (n tokens, the rows of L^T A L / f_scale), x_opt (1 token, L^-1 (x* - centre)) and
        offset (1 token, -f_shift / f_scale), so g(x') = (x' - x_opt')^T A' (x' - x_opt') +
        offset, with L the frame's linear map (scale I, or an affine frame's E, the simplex's
        edge matrix or CMA-ES's sigma C^1/2: then A' = E^T A E / f_scale and x_opt' =
        E^-1 (x* - centre)).
        """
        frame = frame or Frame.identity(self.batch_size, self.dim, self.params_dtype)
        x_opt = frame.points_to(self.params["x_opt"][:, None, :])
        return {
            "A": frame.curvature(self.hessian_half()),
            "x_opt": x_opt,
            "offset": (-frame.f_shift / frame.f_scale)[:, None, None],
        }

    def minimizer(self) -> Tensor:
        return self.params["x_opt"]
