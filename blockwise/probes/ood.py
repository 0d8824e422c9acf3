"""Out of distribution: does the stack still lower f on problems it was not trained on?

Each condition is the stack rolled out on fresh problems against the teacher rolled out on
them, measured as `evaluate_stack` (the measure `blockwise eval` prints) measures a rollout;
its teacher-forced errors, a second pass through every block, are not needed here:
    more steps     the trained family and settings, twice the stack's depth but at most
                   MORE_STEPS layers past it (the last block repeats past it)
    settings       the trained family with one setting moved (VARIANTS: a quadratic's
                   condition number, least squares' noise, weight scale, input range)
    other families every other family whose problem tokens fill the stack's slots (in oracle
                   mode most do; in in_context mode each family has its own, and the stack
                   cannot read them: listed as such, not run)
It still lowers f where the median optimality gap after the last layer is below the one at the
start; the progress ratio says how much of the teacher's decrease it makes.
"""

from __future__ import annotations

import math

import torch

from blockwise import problems as families
from blockwise.build import build_codec
from blockwise.config import Recipe
from blockwise.errors import emulation_error
from blockwise.evaluation.metrics import (
    LayerErrors,
    LayerQuantiles,
    ProgressRatio,
    breakdown_depth,
)
from blockwise.jsonable import to_jsonable
from blockwise.optimality import objective_gap, optimum
from blockwise.problems import Problem
from blockwise.rollout import Trajectory, rollout
from blockwise.stack import Stack

MORE_STEPS = 16
"""The most layers past its depth a stack is run: each costs a block on every problem, and a
96-layer stack's 96 more would cost as much as the rest of the probes."""

VARIANTS = {
    "quadratic": ({"condition": 100.0}, {"condition": 1000.0}),
    "least_squares": ({"noise": 0.5}, {"w_scale": 3.0}, {"input_range": 1.5}),
    "rosenbrock": (),
    "rastrigin": (),
    "sphere": (),
}


def more_steps(depth: int) -> int:
    """The layers of the "more steps" condition: 2 depth, at most depth + MORE_STEPS."""
    return depth + min(depth, MORE_STEPS)


def conditions(recipe: Recipe, depth: int) -> list[tuple[str, str, dict, int]]:
    """(label, family, settings, layers) for each condition, for a stack of `depth` layers."""
    own = recipe.problem
    longer = more_steps(depth)
    out = [(f"{own.family}, {longer} layers", own.family, dict(own.settings), longer)]
    for change in VARIANTS.get(own.family, ()):
        label = ", ".join(f"{k} {v:g}" for k, v in change.items())
        out.append((f"{own.family}, {label}", own.family, {**own.settings, **change}, depth))
    for family in sorted(families.REGISTRY):
        if family != own.family:
            out.append((family, family, {}, depth))
    return out


def out_of_distribution(stack: Stack, recipe: Recipe, count: int, seed: int) -> list[dict]:
    """One row per condition: {"condition", "family", "settings", "layers"} and either the
    summary of its evaluation or "skipped" with the reason."""
    rows = []
    for label, family, settings, layers in conditions(recipe, stack.depth):
        row = {"condition": label, "family": family, "settings": settings, "layers": layers}
        problem = families.make(family, count, recipe.problem.dim, seed, **settings)
        codec = build_codec(recipe, problem)
        if codec.slots != stack.codec.slots:
            rows.append(row | {"skipped": f"its {recipe.codec.mode} problem tokens fill other "
                                          "slots than the stack reads"})
            continue
        x0 = problem.sample_x0(seed=seed, radius=recipe.problem.x0_radius)
        traj = rollout(stack.codec.teacher, problem, x0, layers)
        moved = Stack(codec, stack.readio, list(stack.blocks), stack.looped,
                      stack.depth if stack.looped else None)
        m = measure(moved, problem, traj, layers, recipe.eval.threshold)
        rows.append(row | summary(m, stack.depth))
    return rows


@torch.no_grad()
def measure(stack: Stack, problem: Problem, traj: Trajectory, layers: int,
            threshold: float) -> dict:
    """The stack rolled out from traj[0] for `layers` layers (block min(k, depth) at layer k)
    against the teacher's `traj`, per layer, as `evaluate_stack` computes it: {"problems",
    "gap": {"teacher", "emulated"}: median f - f* at layers 0..L, "progress": median progress
    ratio at 1..L, "rollout": median error of the primary field at 1..L, "breakdown_depth"}.
    A problem whose teacher diverged by layer k is left out there, as there."""
    teacher, depth = stack.codec.teacher, stack.depth
    primary = stack.codec.learned_fields[0]
    rolled = LayerErrors(layers, [primary])
    gap = LayerQuantiles(layers + 1, ["teacher", "emulated"], first_layer=0)
    progress = ProgressRatio(layers)
    f_star = optimum(problem, teacher, traj)

    def gaps(state, k: int) -> torch.Tensor:
        found = objective_gap(problem, teacher, state, f_star)
        return found.masked_fill(traj.diverged[k], math.nan)

    start = gaps(traj[0], 0)
    gap.update(0, "teacher", start)
    gap.update(0, "emulated", start)
    state = traj[0]
    for k in range(1, layers + 1):
        state = stack.layer(min(k, depth), state, problem)
        error = emulation_error(state[primary], traj[k][primary], traj[k - 1][primary])
        rolled.update(k, primary, error.masked_fill(traj.diverged[k], math.nan))
        teacher_gap, emulated_gap = gaps(traj[k], k), gaps(state, k)
        gap.update(k, "teacher", teacher_gap)
        gap.update(k, "emulated", emulated_gap)
        progress.update(k, start, teacher_gap, emulated_gap)
    medians = {key: v["median"].reshape(-1) for key, v in gap.compute().items()}
    errors = rolled.compute()[primary]["median"].reshape(-1)
    return to_jsonable({
        "problems": problem.batch_size,
        "gap": medians,
        "progress": progress.compute()["median"].reshape(-1),
        "rollout": errors,
        "breakdown_depth": breakdown_depth(errors, threshold),
    })


def summary(metrics: dict, depth: int) -> dict:
    """The numbers a condition is judged by, from `measure`'s metrics."""
    gap, progress = metrics["gap"], metrics["progress"]
    first, last = gap["emulated"][0], gap["emulated"][-1]
    ratio = last / first if first and last is not None else math.nan
    return {
        "problems": metrics["problems"],
        "gap_start": first,
        "gap_last": last,
        "teacher_gap_last": gap["teacher"][-1],
        "gap_ratio": ratio,
        "lowers_f": bool(ratio < 1),
        "progress_at_depth": progress[min(depth, len(progress)) - 1],
        "progress_last": progress[-1],
        "rollout_last": metrics["rollout"][-1],
        "breakdown_depth": metrics["breakdown_depth"],
        "progress": progress,
    }
