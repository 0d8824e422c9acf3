"""Counterfactual objective: swap the objective a stack optimizes at layer j and see whether
later layers move toward the new one's minimum, as an optimizer would.

The stack runs on problem P for layers 1..j-1. From its state s there, the objective becomes Q
(another instance of the same family): every layer from j on is given Q, so its encode writes
Q's problem tokens (in oracle mode, Q's f values). The f values a state carries (Nelder-Mead's
vertex values, GD's f) are what the network knows of f too, so they are re-evaluated on Q
(`restart`): a state with P's values beside Q's tokens is one no optimizer is ever in. The
references are the teacher restarted from the same s on Q and on P.

Per layer k >= j, per problem, with x the incumbent (the point the optimizer offers) and d =
x_teacher_Q - x_teacher_P the teacher's own answer to the swap:
    retarget  ((x_stack_Q - x_teacher_P) . d) / |d|^2: 1 moves as the teacher restarted on Q
              does, 0 as if nothing had been swapped; `control` is the same for the stack that
              kept P, which shows how far from 0 emulation error alone puts it
    progress_on_new  log(g_0 / g_stack) / log(g_0 / g_teacher), g = f_Q - f*_Q, g_0 at s: the
              share of the teacher's progress on Q that the swapped stack makes
Problems where the teacher's two answers coincide (|d| <= 1e-9 (1 + |x|): both restarted
teachers kept the same best point) have no retarget; `counted` says how many have one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from blockwise.optimality import TINY, f_at
from blockwise.problems import Problem, evaluate
from blockwise.stack import Stack
from blockwise.teachers import State, Teacher
from blockwise.teachers.nelder_mead import sort_simplex

PATHS = 3  # problems whose incumbent paths are kept for the figure


def restart(state: State, objective) -> State:
    """`state` with the f values it carries evaluated on `objective` (a simplex re-sorted by
    them, best first); a state without f values (CMA-ES's) is returned as it is."""
    if "fvals" in state:
        simplex = state["simplex"]
        simplex, fvals = sort_simplex(simplex, evaluate(objective, simplex).to(simplex.dtype))
        return {**state, "simplex": simplex, "fvals": fvals}
    if "f" in state:
        return {**state, "f": f_at(objective, state["x"]).to(state["x"].dtype)}
    return dict(state)


def _f_star(problem: Problem, teacher: Teacher, path: list[State]) -> Tensor:
    """f* (B,): f at the family's minimizer, else the least f the teacher reached on `path`."""
    first = teacher.incumbent(path[0])
    x_star = problem.minimizer()
    if x_star is not None:
        return f_at(problem, x_star.to(first))
    return torch.stack([f_at(problem, teacher.incumbent(s)) for s in path]).amin(0)


def _median(values: Tensor) -> float:
    values = values[torch.isfinite(values)]
    return float(values.median()) if values.numel() else math.nan


def _along(x: Tensor, old: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
    """Where x (B, n) lies on the line from old to new (B, n): 0 at old, 1 at new; and (B,)
    whether the two are apart enough (|new - old| > 1e-9 (1 + |old|)) for that to mean
    anything."""
    d = new - old
    norm2 = (d**2).sum(-1)
    apart = norm2.sqrt() > 1e-9 * (1 + old.norm(dim=-1))
    return ((x - old) * d).sum(-1) / norm2.clamp_min(1e-300), apart


@torch.no_grad()
def counterfactual(
    stack: Stack, problem: Problem, other: Problem, state: State, swap: int, layers: int
) -> dict:
    """The objective swapped from `problem` to `other` (same batch, family and dimension) at
    layer `swap` of a run from `state` for `layers` layers (beyond the stack's depth the last
    block repeats). Returns per layer k = swap..layers the medians described above and the
    problems counted, and the incumbent paths of the first PATHS problems."""
    teacher = stack.codec.teacher

    def layer(k: int, s: State, objective: Problem) -> State:
        return stack.layer(min(k, stack.depth), s, objective)

    before = [state]
    for k in range(1, swap):
        before.append(layer(k, before[-1], problem))
    runs = {
        "swapped": [restart(before[-1], other)],
        "kept": [restart(before[-1], problem)],
        "teacher_new": [restart(before[-1], other)],
        "teacher_old": [restart(before[-1], problem)],
    }
    for k in range(swap, layers + 1):
        runs["swapped"].append(layer(k, runs["swapped"][-1], other))
        runs["kept"].append(layer(k, runs["kept"][-1], problem))
        runs["teacher_new"].append(teacher.step(other, runs["teacher_new"][-1])[0])
        runs["teacher_old"].append(teacher.step(problem, runs["teacher_old"][-1])[0])
    point = {name: [teacher.incumbent(s) for s in run] for name, run in runs.items()}
    f_star = _f_star(other, teacher, runs["teacher_new"])

    def gap(x: Tensor) -> Tensor:
        return (f_at(other, x) - f_star).clamp_min(TINY)

    start = gap(point["teacher_new"][0])
    rows = {"layer": [], "retarget": [], "control": [], "progress_on_new": [], "counted": []}
    for i, k in enumerate(range(swap, layers + 1), start=1):
        old, new = point["teacher_old"][i], point["teacher_new"][i]
        retarget, apart = _along(point["swapped"][i], old, new)
        control, _ = _along(point["kept"][i], old, new)
        moved = torch.log(start / gap(new))
        progress = torch.log(start / gap(point["swapped"][i])) / moved
        rows["layer"].append(k)
        rows["retarget"].append(_median(retarget[apart]))
        rows["control"].append(_median(control[apart]))
        rows["progress_on_new"].append(_median(progress[moved > 0]))
        rows["counted"].append(int(apart.sum()))
    paths = {name: torch.stack(xs, 1)[:PATHS].tolist() for name, xs in point.items()}
    paths["before"] = torch.stack([teacher.incumbent(s) for s in before], 1)[:PATHS].tolist()
    return {"swap_layer": swap, **rows, "paths": paths}
