"""The Problem base class and the adapter that lets a plain callable stand in for one.

A problem is a batch of B instances of one objective family in n dimensions. Calling it
evaluates f on points of shape (B, m, n) and returns (B, m): instance b sees only its own
points x[b]. Parameters are sampled once, in float64 on the CPU, from a counter-based key per
instance (see `blockwise.random`), so instance b is the same for any batch size, on any device
and in any dtype; evaluation casts them to the points' dtype and device.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from blockwise import random

Objective = Callable[[Tensor], Tensor]
"""Anything that maps points (B, m, n) to values (B, m): a Problem or a plain batched callable."""


class Problem:
    """A batch of objective instances; subclasses set `family` and implement `evaluate`.

    Attributes:
        dim: n, the dimension of the search space.
        params: per-instance parameters, each a float64 CPU tensor with leading dimension B.
        settings: the family's settings, as passed to `sample` (documented on each family).
    """

    family: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, dim: int, params: dict[str, Tensor], settings: dict[str, Any]):
        self.dim = dim
        self.params = params
        self.settings = settings
        self._cast: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}

    @classmethod
    def sample(cls, batch: int, dim: int, seed: int, **settings: Any) -> Problem:
        """B instances from `seed`: instance b depends only on (seed, b) and the settings."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{cls.family}: batch must be a positive int, got {batch!r}")
        if not isinstance(dim, int) or dim < cls.min_dim():
            raise ValueError(f"{cls.family}: dim must be an int >= {cls.min_dim()}, got {dim!r}")
        unknown = set(settings) - set(cls.defaults)
        if unknown:
            raise ValueError(
                f"{cls.family}: unknown setting(s) {sorted(unknown)}; "
                f"expected some of {sorted(cls.defaults)}"
            )
        full = {**cls.defaults, **settings}
        cls.check_settings(full)
        keys = random.fold(random.key(seed), torch.arange(batch))  # (B,)
        return cls(dim, cls.sample_params(keys, dim, full), full)

    @classmethod
    def min_dim(cls) -> int:
        return 1

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Raise ValueError naming a setting whose value is impossible."""

    @classmethod
    def sample_params(cls, keys: Tensor, dim: int, settings: dict[str, Any]) -> dict[str, Tensor]:
        """Per-instance parameters from keys (B,), in float64."""
        raise NotImplementedError

    def evaluate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """f(x) for x (B, m, n) with parameters p cast to x's dtype and device; returns (B, m)."""
        raise NotImplementedError

    def evaluate_batch_last(self, x: Tensor) -> Tensor:
        """f at points x (m, n, B), batch last, -> (m, B), for teachers that work batch last;
        a family that can skip the transposes overrides it, with the same values."""
        return self(x.permute(2, 0, 1).contiguous()).t()

    def gradient(self, x: Tensor) -> Tensor:
        """df/dx at points (B, m, n), shape (B, m, n). Autograd unless a family knows better."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self(x).sum(), x)
        return g

    def problem_tokens(self, frame: Frame | None = None) -> dict[str, Tensor]:
        """What the network is told about f, as groups of tokens: name -> (B, T, w).

        Each group is T tokens with w slots of their own. With a frame, the tokens describe the
        objective in the codec's frame, g(x') = (f(centre + L x') - f_shift) / f_scale, so a
        step can be learned scale-free. This default gives the raw parameters and the frame
        itself as a token (in an affine frame also its matrix E, one token per column: for
        Nelder–Mead an edge v_i - v_0); families with a closed form in the frame override it.
        """
        frame = frame or Frame.identity(self.batch_size, self.dim, self.params_dtype)
        tokens = {name: _as_tokens(value) for name, value in self.params.items()}
        tokens["frame"] = frame.as_token()
        if frame.affine:
            tokens["edges"] = frame.edges.mT
        return tokens

    def minimizer(self) -> Tensor | None:
        """The global minimizer (B, n) where the family knows it, else None."""
        return None

    def sample_x0(
        self, seed: int, radius: float = 2.0, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        """Starting points (B, n): the minimizer (or 0) plus U(-radius, radius)^n, keyed by seed."""
        keys = random.fold(random.key(seed), torch.arange(self.batch_size))
        u = random.uniform(keys, (self.dim,))
        centre = self.minimizer()
        x0 = (2 * u - 1) * radius + (0.0 if centre is None else centre)
        return x0.to(dtype)

    @property
    def params_dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def batch_size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> Problem:
        """The instances picked by `index` along the batch dimension, as a Problem."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        params = {k: v[index] for k, v in self.params.items()}
        return type(self)(self.dim, params, self.settings)

    def _params_like(self, x: Tensor) -> dict[str, Tensor]:
        cache_key = (x.dtype, x.device)
        if cache_key not in self._cast:
            self._cast[cache_key] = {
                k: v.to(device=x.device, dtype=x.dtype if v.is_floating_point() else v.dtype)
                for k, v in self.params.items()
            }
        return self._cast[cache_key]

    def __call__(self, x: Tensor) -> Tensor:
        check_points(x, self.batch_size, self.dim, self.family)
        return self.evaluate(x, self._params_like(x))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch={self.batch_size}, dim={self.dim}, {self.settings})"


@dataclasses.dataclass(frozen=True)
class Frame:
    """An affine frame for points and values: x = centre + L x', f = f_shift + f_scale f'.

    The linear map L is scale I (a translation-and-scale frame), or, where `edges` is given,
    the edge matrix E itself (an affine frame: Nelder–Mead's, where E's columns are the edges
    v_i - v_0 of the current simplex, so its vertices become 0, e_1, ..., e_n; or CMA-ES's
    sigma C^1/2, so its distribution becomes N(0, I)).

    Attributes: centre (B, n); scale, f_shift, f_scale (B,), scales > 0; edges (B, n, n) or
    None. In an affine frame E carries the whole linear map, and scale is what the codec keeps
    beside it: 1 for the simplex codecs, sigma for CMA-ES (E = sigma C^1/2).
    """

    centre: Tensor
    scale: Tensor
    f_shift: Tensor
    f_scale: Tensor
    edges: Tensor | None = None

    @classmethod
    def identity(
        cls, batch: int, dim: int, dtype: torch.dtype = torch.float64, affine: bool = False
    ) -> Frame:
        """The identity frame; with `affine`, as an affine frame (E = I)."""
        zeros, ones = torch.zeros(batch, dtype=dtype), torch.ones(batch, dtype=dtype)
        edges = torch.eye(dim, dtype=dtype).expand(batch, dim, dim).clone() if affine else None
        return cls(torch.zeros(batch, dim, dtype=dtype), ones, zeros, ones, edges)

    @property
    def affine(self) -> bool:
        return self.edges is not None

    def linear(self) -> Tensor:
        """L (B, n, n): x - centre = L x'."""
        if self.affine:
            return self.edges
        n = self.centre.shape[-1]
        eye = torch.eye(n, dtype=self.scale.dtype, device=self.scale.device)
        return self.scale[:, None, None] * eye

    def points_to(self, x: Tensor) -> Tensor:
        """Points x (B, ..., n) -> x' = L^-1 (x - centre), same shape."""
        batch, n = x.shape[0], x.shape[-1]
        d = x - self.centre.reshape((batch,) + (1,) * (x.ndim - 2) + (n,))
        if not self.affine:
            return d / self.scale.reshape((batch,) + (1,) * (x.ndim - 1))
        rows = d.reshape(batch, -1, n)  # (B, m, n)
        return torch.linalg.solve(self.edges, rows.mT).mT.reshape(x.shape)

    def points_from(self, x: Tensor) -> Tensor:
        """Points x' (B, ..., n) in the frame -> x = centre + L x', same shape."""
        batch, n = x.shape[0], x.shape[-1]
        centre = self.centre.reshape((batch,) + (1,) * (x.ndim - 2) + (n,))
        if not self.affine:
            return centre + self.scale.reshape((batch,) + (1,) * (x.ndim - 1)) * x
        moved = x.reshape(batch, -1, n) @ self.edges.mT  # rows (E x')^T, (B, m, n)
        return centre + moved.reshape(x.shape)

    def as_token(self) -> Tensor:
        """(B, 1, n + 3): [centre, scale, f_shift, f_scale]."""
        scalars = torch.stack([self.scale, self.f_shift, self.f_scale], -1)
        return torch.cat([self.centre, scalars], -1)[:, None, :]

    def value_scales(self) -> Tensor:
        """(B, 1, 2): [scale^2 / f_scale, -f_shift / f_scale], the curvature and offset a
        quadratic-type objective picks up in a translation-and-scale frame."""
        return torch.stack([self.scale**2 / self.f_scale, -self.f_shift / self.f_scale], -1)[
            :, None, :
        ]

    def curvature(self, a: Tensor) -> Tensor:
        """L^T A L / f_scale (B, n, n) for A (B, n, n): the matrix of a quadratic form
        (x - x*)^T A (x - x*) in the frame, divided by f_scale like f."""
        lin = self.linear()
        return lin.mT @ a @ lin / self.f_scale[:, None, None]


def _as_tokens(value: Tensor) -> Tensor:
    """A per-instance parameter as tokens: (B,) -> (B, 1, 1), (B, w) -> (B, 1, w), (B, T, w)."""
    if value.ndim == 1:
        return value[:, None, None]
    if value.ndim == 2:
        return value[:, None, :]
    return value


def check_points(x: Tensor, batch: int, dim: int, where: str) -> None:
    """Raise ValueError unless x is a floating tensor of shape (batch, m, dim)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{where}: points must be a floating-point tensor, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[0] != batch or x.shape[2] != dim:
        raise ValueError(
            f"{where}: points must have shape (B={batch}, m, n={dim}), got {tuple(x.shape)}"
        )


def check_number(family: str, name: str, value: Any, minimum: float, integer: bool = False) -> None:
    """Raise ValueError naming setting `name` unless `value` is a finite number >= minimum.

    Comparing alone is not enough: inf passes `>= 0` and a string raises an anonymous TypeError.
    """
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value >= minimum):
        what = "an int" if integer else "a finite number"
        raise ValueError(f"{family}: {name} must be {what} >= {minimum}, got {value!r}")


def evaluate(objective: Objective, x: Tensor) -> Tensor:
    """f(x) for any objective, with its output checked: (B, m, n) -> (B, m).

    A plain callable is accepted wherever a Problem is; this is where its answer is checked,
    so a wrong shape is reported here rather than as a broadcasting surprise later.
    """
    f = objective(x)
    if not isinstance(f, Tensor) or f.shape != x.shape[:2]:
        shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(
            f"objective {objective!r} returned {shape} for points {tuple(x.shape)}; "
            f"expected shape {tuple(x.shape[:2])} (B, m)"
        )
    return f


def gradient(objective: Objective, x: Tensor) -> Tensor:
    """df/dx at points (B, m, n): the problem's own gradient, or autograd through a callable."""
    if isinstance(objective, Problem):
        return objective.gradient(x)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(evaluate(objective, x).sum(), x)
    return g
