"""Roll a teacher out for K steps into a Trajectory s_0 .. s_K.

The trajectory is preallocated, one (K+1, B, ...) tensor per state field, so a rollout holds
the trajectory and one step's temporaries, nothing more. A problem whose state turns non-finite
(an objective overflowing, say), or whose step saw non-finite values, is marked in `diverged`
from that step on and its state is frozen at the last finite value, so NaNs never reach
training data unannounced.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from blockwise.buffers import fresh_buffer
from blockwise.problems import Objective
from blockwise.teachers import Teacher, make
from blockwise.teachers.base import State


@dataclasses.dataclass
class Trajectory:
    """States s_0..s_K of B problems.

    Attributes:
        states: field -> tensor (K+1, B, ...): states[f][k] is field f of s_k.
        extras: field -> tensor (K, B, ...): extras[f][k] belongs to the step s_k -> s_{k+1}.
        diverged: (K+1, B) bool, True from the first step at which a problem's state was
            non-finite; its state is frozen at the last finite one.
    """

    states: dict[str, Tensor]
    extras: dict[str, Tensor]
    diverged: Tensor

    @property
    def steps(self) -> int:
        """K, the number of steps taken."""
        return self.diverged.shape[0] - 1

    def __len__(self) -> int:
        return self.steps + 1

    def __getitem__(self, k: int) -> State:
        """The state s_k as a dict of (B, ...) tensors."""
        return {name: value[k] for name, value in self.states.items()}


def _finite_rows(*fields: dict[str, Tensor]) -> Tensor:
    """(B,) True where every floating tensor of the given dicts is finite."""
    ok = None
    for value in (v for d in fields for v in d.values()):
        if value.is_floating_point():
            row_ok = torch.isfinite(value).reshape(value.shape[0], -1).all(-1)
            ok = row_ok if ok is None else ok & row_ok
    assert ok is not None, "a state needs at least one floating-point field"
    return ok


def _all_finite(*fields: dict[str, Tensor]) -> bool:
    """Whether every floating tensor of the given dicts is finite: one sum per tensor, since a
    sum is finite only if its terms are (a finite sum that overflows only gives a false alarm,
    which `_finite_rows` then clears)."""
    total = 0.0
    for value in (v for d in fields for v in d.values()):
        if value.is_floating_point():
            total += float(value.sum())
    return math.isfinite(total)


def _keep(diverged: Tensor, old: Tensor, new: Tensor) -> Tensor:
    mask = diverged.reshape(diverged.shape + (1,) * (new.ndim - 1))
    return torch.where(mask, old, new)


def rollout(teacher: Teacher | str, objective: Objective, x0: Tensor, steps: int) -> Trajectory:
    """Run `teacher` from x0 (B, n) on `objective` for `steps` steps.

    `teacher` is a Teacher or a registry name (default settings).
    """
    if isinstance(teacher, str):
        teacher = make(teacher)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"rollout: steps must be an int >= 0, got {steps!r}")
    state = teacher.init(objective, x0)
    diverged = torch.zeros(steps + 1, x0.shape[0], dtype=torch.bool, device=x0.device)
    diverged[0] = ~_finite_rows(state)
    any_diverged = bool(diverged[0].any())
    states = {name: fresh_buffer(value, steps + 1) for name, value in state.items()}
    for name, value in state.items():
        states[name][0] = value
    extras: dict[str, Tensor] = {}
    for k in range(steps):
        new, info = teacher.step(objective, state)
        # Extras count: a CMA step on NaN f values ranks garbage into a finite-looking state.
        # Rows are checked one by one only once something is non-finite (diverged[k + 1] is
        # already False everywhere otherwise).
        if any_diverged or not _all_finite(new, info):
            bad = diverged[k] | ~_finite_rows(new, info)
            diverged[k + 1] = bad
            if bad.any():
                any_diverged = True
                new = {name: _keep(bad, state[name], new[name]) for name in state}
        state = new
        for name, value in state.items():
            states[name][k + 1] = value
        for name, value in info.items():
            if name not in extras:  # zeros before the first step that reports it
                extras[name] = fresh_buffer(value, steps)
                extras[name][:k] = 0
            extras[name][k] = value
    return Trajectory(states, extras, diverged)
