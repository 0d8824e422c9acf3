"""The teacher contract: a deterministic optimizer as a pure, batched step on explicit state.

A teacher is a frozen dataclass whose fields are its settings. Its state is a dict of tensors,
each with a leading batch dimension B (field names and shapes are listed in `state_fields`).

    state = teacher.init(objective, x0)               # x0: (B, n)
    state, extras = teacher.step(objective, state)    # extras: per-step facts (branch, samples)

`step` never mutates its input and draws no hidden randomness, so a trajectory is a function of
(teacher settings, objective, x0) alone. `blockwise.rollout` runs K steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor

from blockwise.problems import Objective

State = dict[str, Tensor]
"""A teacher's whole state: field name -> tensor with a leading batch dimension B."""


@dataclasses.dataclass(frozen=True)
class Teacher:
    """Base class: subclasses are frozen dataclasses of settings and implement init and step."""

    name: ClassVar[str]
    state_fields: ClassVar[dict[str, str]] = {}
    """Field name -> shape and meaning, for documentation and the codec."""
    extra_fields: ClassVar[dict[str, str]] = {}
    """Per-step extras returned by `step`: name -> shape and meaning."""
    branches: ClassVar[tuple[str, ...]] = ()
    """Names of the branch codes 0, 1, ... that `step` reports in extras["branch"]: (B,) int64,
    or (B, P), one per moved part, the last of which evaluation splits errors by; -1 is no
    branch (a problem already done). Empty for a teacher without branches (and that extra)."""
    points: ClassVar[str | None] = None
    """The state field a plot draws as the state's points: (B, m, n) m points (a simplex, a
    population) or (B, n) one point; None draws the incumbent."""
    outline: ClassVar[bool] = False
    """Whether the points are vertices drawn as a closed outline (a simplex) rather than apart."""
    spread: ClassVar[tuple[str, str] | None] = None
    """(scale (B,), covariance (B, n, n)) fields of a search distribution N(p, scale^2 cov)
    around the first point p, drawn as its 1-sigma ellipse; None if there is none."""

    def init(self, objective: Objective, x0: Tensor) -> State:
        """The state s_0 from starting points x0 (B, n)."""
        raise NotImplementedError

    def step(self, objective: Objective, state: State) -> tuple[State, dict[str, Tensor]]:
        """One step: s_k -> s_{k+1}, with this step's extras."""
        raise NotImplementedError

    def incumbent(self, state: State) -> Tensor:
        """The point (B, n) the optimizer currently offers as its answer."""
        raise NotImplementedError

    def drawn_points(self, state: State) -> Tensor:
        """The points (B, m, n) a plot draws for `state`: the `points` field, or the incumbent
        (m = 1). Any leading dim serves as B: steps of one problem's trajectory, say."""
        if self.points is None:
            return self.incumbent(state)[:, None]
        value = state[self.points]
        return value if value.ndim == 3 else value[:, None]

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_x0(x0: Any, where: str) -> Tensor:
    """Check x0 is a finite floating tensor (B, n); the TypeError or ValueError names x0."""
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        raise TypeError(
            f"{where}: x0 must be a floating-point tensor (B, n), got {type(x0).__name__}"
        )
    if x0.ndim != 2 or x0.shape[0] < 1 or x0.shape[1] < 1:
        raise ValueError(f"{where}: x0 must have shape (B, n), got {tuple(x0.shape)}")
    if not torch.isfinite(x0).all():
        rows = (~torch.isfinite(x0)).any(-1).nonzero().flatten().tolist()
        raise ValueError(f"{where}: x0 has non-finite entries in rows {rows[:10]}")
    return x0


def check_state(state: Any, teacher: Teacher) -> State:
    """Raise a ValueError naming the missing fields unless `state` has all of the teacher's."""
    if not isinstance(state, dict):
        raise TypeError(
            f"{teacher.name}: state must be a dict of tensors, got {type(state).__name__}"
        )
    missing = set(teacher.state_fields) - set(state)
    if missing:
        raise ValueError(
            f"{teacher.name}: state lacks field(s) {sorted(missing)}; "
            f"expected {sorted(teacher.state_fields)}"
        )
    return state
