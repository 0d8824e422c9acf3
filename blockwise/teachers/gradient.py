"""Gradient teachers: gradient descent, heavy-ball / Nesterov momentum and Adam.

Each is a pure, batched step that is bitwise equal to `torch.optim` on the same (B, n) parameter
(single-tensor path, `foreach=False`): the updates below are written with the very primitive ops
and Python-float coefficients of `torch.optim.sgd._single_tensor_sgd` and
`torch.optim.adam._single_tensor_adam`, so they round identically.

State (every field has leading dimension B):
    x (B, n): the iterate.   f (B,): the objective at x.
    step (B,) int64: steps taken so far.   Momentum adds `buffer` (B, n); Adam adds `m`, `v` (B, n).
`step` returns no extras. The gradient is `blockwise.problems.gradient` (a problem's closed form
where it has one, else autograd).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor

from blockwise.problems import Objective, evaluate, gradient
from blockwise.teachers.base import State, Teacher, check_state, check_x0

_BASE_FIELDS = {
    "x": "(B, n) the iterate",
    "f": "(B,) the objective at x",
    "step": "(B,) int64, steps taken so far",
}


def _real(where: str, name: str, value: Any) -> float:
    """`value` as a float; a ValueError naming the setting unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be a finite real number, got {value!r}")
    return float(value)


def _require(ok: bool, where: str, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{where}: {name} must be {rule}, got {value!r}")


def _f(objective: Objective, x: Tensor) -> Tensor:
    """f at x (B, n), shape (B,)."""
    return evaluate(objective, x[:, None, :])[:, 0]


def _grad(objective: Objective, x: Tensor) -> Tensor:
    """df/dx at x (B, n), shape (B, n)."""
    return gradient(objective, x[:, None, :])[:, 0]


@dataclasses.dataclass(frozen=True)
class _GradientTeacher(Teacher):
    """What the three share: x, f and a step count, started at x0."""

    def _start(self, objective: Objective, x0: Tensor) -> State:
        x0 = check_x0(x0, self.name)
        step = torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device)
        return {"x": x0, "f": _f(objective, x0), "step": step}

    def _moved(self, objective: Objective, x: Tensor, state: State, **fields: Tensor) -> State:
        """The next state: iterate x, its f, one more step, and the teacher's own fields."""
        return {"x": x, "f": _f(objective, x), "step": state["step"] + 1, **fields}

    def incumbent(self, state: State) -> Tensor:
        """The point (B, n) the teacher currently proposes: the iterate."""
        return state["x"]


@dataclasses.dataclass(frozen=True)
class GradientDescent(_GradientTeacher):
    """x <- x - lr * g, as `torch.optim.SGD(lr=lr)` (momentum 0) with `torch.add(x, g, alpha=-lr)`.

    Settings: lr (> 0).
    """

    name: ClassVar[str] = "gradient_descent"
    state_fields: ClassVar[dict[str, str]] = _BASE_FIELDS

    lr: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _real(self.name, "lr", self.lr))
        _require(self.lr > 0, self.name, "lr", "> 0", self.lr)

    def init(self, objective: Objective, x0: Tensor) -> State:
        return self._start(objective, x0)

    def step(self, objective: Objective, state: State) -> tuple[State, dict[str, Tensor]]:
        state = check_state(state, self)
        x = torch.add(state["x"], _grad(objective, state["x"]), alpha=-self.lr)
        return self._moved(objective, x, state), {}


@dataclasses.dataclass(frozen=True)
class Momentum(_GradientTeacher):
    """SGD with heavy-ball or Nesterov momentum, as `torch.optim.SGD` documents it:

        b_1 = g_1,   b_t = momentum * b_{t-1} + (1 - dampening) * g_t,
        d_t = g_t + momentum * b_t (nesterov) or b_t,   x_t = x_{t-1} - lr * d_t.

    Settings: lr (> 0), momentum (in (0, 1); momentum 0 is `gradient_descent`), dampening (in
    [0, 1]), nesterov (bool; as in torch it needs dampening 0).
    """

    name: ClassVar[str] = "momentum"
    state_fields: ClassVar[dict[str, str]] = {
        **_BASE_FIELDS,
        "buffer": "(B, n) the momentum buffer b (zeros before the first step)",
    }

    lr: float
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "dampening"):
            object.__setattr__(self, name, _real(self.name, name, getattr(self, name)))
        _require(self.lr > 0, self.name, "lr", "> 0", self.lr)
        _require(
            0 < self.momentum < 1, self.name, "momentum",
            "in (0, 1) (use gradient_descent for momentum 0)", self.momentum,
        )
        _require(0 <= self.dampening <= 1, self.name, "dampening", "in [0, 1]", self.dampening)
        _require(isinstance(self.nesterov, bool), self.name, "nesterov", "a bool", self.nesterov)
        _require(
            not (self.nesterov and self.dampening != 0), self.name, "dampening",
            "0 when nesterov is True (as torch.optim.SGD requires)", self.dampening,
        )

    def init(self, objective: Objective, x0: Tensor) -> State:
        state = self._start(objective, x0)
        return {**state, "buffer": torch.zeros_like(state["x"])}

    def step(self, objective: Objective, state: State) -> tuple[State, dict[str, Tensor]]:
        state = check_state(state, self)
        x = state["x"]
        g = _grad(objective, x)
        # torch.optim.SGD's first buffer is a copy of the gradient, undamped.
        first = (state["step"] == 0)[:, None]
        later = torch.add(state["buffer"] * self.momentum, g, alpha=1 - self.dampening)
        buffer = torch.where(first, g, later)
        direction = torch.add(g, buffer, alpha=self.momentum) if self.nesterov else buffer
        x = torch.add(x, direction, alpha=-self.lr)
        return self._moved(objective, x, state, buffer=buffer), {}


@dataclasses.dataclass(frozen=True)
class Adam(_GradientTeacher):
    """Adam (Kingma & Ba, ICLR 2015, Algorithm 1) as `torch.optim.Adam` (amsgrad=False, no
    weight decay) computes it, at step t = step + 1:

        m <- lerp(m, g, 1 - beta1),   v <- beta2 * v + (1 - beta2) * g * g,
        x <- x - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).

    Settings: lr (> 0), betas (two numbers in [0, 1)), eps (> 0, so a zero gradient never
    divides 0 by 0).
    """

    name: ClassVar[str] = "adam"
    state_fields: ClassVar[dict[str, str]] = {
        **_BASE_FIELDS,
        "m": "(B, n) first-moment estimate (torch's exp_avg)",
        "v": "(B, n) second-moment estimate (torch's exp_avg_sq)",
    }

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("lr", "eps"):
            object.__setattr__(self, name, _real(self.name, name, getattr(self, name)))
        _require(self.lr > 0, self.name, "lr", "> 0", self.lr)
        _require(self.eps > 0, self.name, "eps", "> 0", self.eps)
        _require(
            isinstance(self.betas, (tuple, list)) and len(self.betas) == 2,
            self.name, "betas", "a pair (beta1, beta2)", self.betas,
        )
        betas = tuple(_real(self.name, "betas", beta) for beta in self.betas)
        _require(all(0 <= b < 1 for b in betas), self.name, "betas", "in [0, 1)", self.betas)
        object.__setattr__(self, "betas", betas)

    def init(self, objective: Objective, x0: Tensor) -> State:
        state = self._start(objective, x0)
        return {**state, "m": torch.zeros_like(state["x"]), "v": torch.zeros_like(state["x"])}

    def step(self, objective: Objective, state: State) -> tuple[State, dict[str, Tensor]]:
        state = check_state(state, self)
        beta1, beta2 = self.betas
        x = state["x"]
        g = _grad(objective, x)
        m = torch.lerp(state["m"], g, 1 - beta1)
        v = torch.addcmul(state["v"] * beta2, g, g, value=1 - beta2)
        root_v = v.sqrt()
        t = state["step"] + 1
        new_x = x
        # torch.optim.Adam forms the bias corrections as Python floats from one shared step count.
        # Problems may differ in step count (a rollout freezes diverged ones), so each distinct
        # count gets torch's exact full-batch update and keeps only its own rows.
        for count in torch.unique(t).tolist():
            step_size = self.lr / (1 - beta1**count)
            denom = root_v / (1 - beta2**count) ** 0.5 + self.eps
            moved = torch.addcdiv(x, m, denom, value=-step_size)
            new_x = torch.where((t == count)[:, None], moved, new_x)
        return self._moved(objective, new_x, state, m=m, v=v), {}
