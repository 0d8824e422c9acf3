"""Teachers: deterministic optimizers as pure batched steps. See `Teacher` for the contract.

    >>> from blockwise import teachers
    >>> nm = teachers.make("nelder_mead", adaptive=True)

A new teacher is one file in this package and one entry in REGISTRY.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from blockwise.teachers.base import State, Teacher, check_state, check_x0
from blockwise.teachers.cma_es import CMAES
from blockwise.teachers.gradient import Adam, GradientDescent, Momentum
from blockwise.teachers.nelder_mead import NelderMead
from blockwise.teachers.parallel_nelder_mead import ParallelNelderMead

REGISTRY: dict[str, type[Teacher]] = {
    cls.name: cls
    for cls in (NelderMead, ParallelNelderMead, CMAES, GradientDescent, Momentum, Adam)
}


def make(name: str, **settings: Any) -> Teacher:
    """The teacher `name` with `settings`; an unknown name or a bad setting raises ValueError."""
    if name not in REGISTRY:
        raise ValueError(f"unknown teacher {name!r}; expected one of {sorted(REGISTRY)}")
    cls = REGISTRY[name]
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(
            f"teacher {name!r}: unknown setting(s) {sorted(unknown)}; "
            f"expected some of {sorted(known)}"
        )
    required = {
        f.name for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = required - set(settings)
    if missing:
        raise ValueError(f"teacher {name!r}: setting(s) {sorted(missing)} must be given")
    return cls(**settings)


__all__ = ["REGISTRY", "State", "Teacher", "check_state", "check_x0", "make"]
