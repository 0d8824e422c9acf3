"""A whole stack measured against its teacher on test problems: `evaluate_stack`.

    metrics = evaluate_stack(stack, problem, traj, threshold=1.0)
    json.dumps(metrics, allow_nan=False)  # plain lists and numbers

The result, a LayerMetrics dict, over the B test problems for layers k = 1..L:

    {
      "layers": L, "problems": B, "fields": [learned field, ...], "primary": fields[0],
      "threshold": threshold,
      "teacher_forced":   {field: {"median": [L], "p10": [L], "p90": [L]}},
      "rollout":          {field: {"median": [L], "p10": [L], "p90": [L]}},
      "identity_rollout": {field: {"median": [L], "p10": [L], "p90": [L]}},
      "objective": {"teacher":  {"median": [L+1], "p10": [L+1], "p90": [L+1]},
                    "emulated": {"median": [L+1], "p10": [L+1], "p90": [L+1]}},
      "progress_ratio": {"median": [L], "p10": [L], "p90": [L]},
      "breakdown_depth": int or None,
      "branches": {branch: {field: {"median": [L], "count": [L]}}} or {},
    }

teacher_forced: block k on the teacher's s_{k-1} against s_k (`teacher_forced.one_step_errors`,
the one definition the per-block table at pretraining shares). rollout: the stack run from s_0,
layer k's state against s_k. identity_rollout: the "do nothing" stack, s_0 held, against s_k.
All three are the normalized error of `blockwise.errors` (divided by ||s_k - s_{k-1}||, so the
identity scores exactly 1 teacher-forced and at layer 1), per learned field, in original
coordinates on decoded states.

objective: f(incumbent) - f* at layers 0..L (layer 0 is s_0 for both), f* = f at the family's
known minimizer, else the smallest f the teacher reached at s_0..s_K; clamped at 1e-300 so that
logs are finite. progress_ratio: per problem log((f_0-f*)/(f~_k-f*)) / log((f_0-f*)/(f_k-f*)),
1 = the teacher's progress, 0 = none, > 1 better, left out where the teacher made no progress.
breakdown_depth: the first layer whose median rollout error of the primary field exceeds
threshold (null if none). branches: for a teacher that declares branches (`Teacher.branches`,
Nelder–Mead's), the teacher-forced error at layer k split by the branch the teacher took in step
k, with the number of problems counted; where a step has one code per moved part (parallel NM's
vertices, worst last), by the last. A problem in no branch (code -1, done by a
convergence test) is left out of them.

Problems that diverged in the teacher's trajectory (traj.diverged[k]) are left out at layer k,
as are errors that are not defined (a field the teacher did not move). An emulated state that is
not finite is not left out: its error is inf (a blow-up is a failure), its gap inf, its progress
ratio -inf. In the JSON-able result NaN (a layer with nothing counted) is None and +-inf is
+-1.8e308, the largest float, since strict JSON has neither.

The summaries come from torchmetrics Metrics (`metrics.py`), so the same code gives the numbers
of all problems when each process of a distributed run evaluates a shard of them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.aggregation import SumMetric

from blockwise import teachers
from blockwise.build import build_codec
from blockwise.checkpoints import load_stack, read_config
from blockwise.config import Recipe, recipe_from_dict
from blockwise.errors import emulation_error, normalized_error
from blockwise.evaluation.metrics import (
    QUANTILES,
    LayerErrors,
    LayerQuantiles,
    ProgressRatio,
    breakdown_depth,
)
from blockwise.evaluation.teacher_forced import one_step_errors
from blockwise.jsonable import to_jsonable
from blockwise.optimality import objective_gap, optimum
from blockwise.problems import Problem
from blockwise.problems import make as sample_problems
from blockwise.rollout import Trajectory, rollout
from blockwise.stack import Stack

LayerMetrics = dict[str, Any]
"""The JSON-able result of `evaluate_stack`; the module docstring gives its keys."""

BEYOND = ("none", "last")
"""Past the stack's depth: "none" is an error, "last" repeats the last block."""



@torch.no_grad()
def evaluate_stack(
    stack: Stack,
    problem: Problem,
    traj: Trajectory,
    threshold: float = 1.0,
    layers: int | None = None,
    beyond: str = "none",
) -> LayerMetrics:
    """The stack's per-layer errors, objective and progress against the teacher's `traj` on
    `problem` (B test problems), for layers 1..L (`layers`, default the stack's depth K).

    L may exceed K with beyond="last" (block min(k, K) runs at layer k), and never exceeds the
    trajectory's steps. The stack runs in eval mode and is left in the mode it was in.
    """
    depth = stack.depth
    num = depth if layers is None else layers
    _check(num, depth, problem, traj, beyond)
    teacher, fields = stack.codec.teacher, list(stack.codec.learned_fields)
    forced, rolled, held = (LayerErrors(num, fields) for _ in range(3))
    objective = LayerQuantiles(num + 1, ["teacher", "emulated"], first_layer=0)
    progress = ProgressRatio(num)
    branches = teacher.branches
    by_branch = LayerErrors(num, [(b, f) for b in branches for f in fields]) if branches else None
    problems = SumMetric()  # B summed over the processes of a distributed evaluation
    problems.update(problem.batch_size)

    f_star = optimum(problem, teacher, traj)
    start = _leave_out(objective_gap(problem, teacher, traj[0], f_star), traj.diverged[0])
    objective.update(0, "teacher", start)
    objective.update(0, "emulated", start)
    mode = stack.training
    stack.eval()
    try:
        state = traj[0]
        for k in range(1, num + 1):
            block, out = min(k, depth), traj.diverged[k]
            prev, target = traj[k - 1], traj[k]
            one_step = one_step_errors(stack, problem, traj, k, block)
            state = stack.layer(block, state, problem)
            for f in fields:
                forced.update(k, f, one_step[f])
                rolled.update(k, f, _leave_out(emulation_error(state[f], target[f], prev[f]), out))
                held.update(k, f, _leave_out(normalized_error(traj[0][f], target[f], prev[f]), out))
            if by_branch is not None:
                taken = _deciding_code(traj.extras["branch"][k - 1])
                for code, name in enumerate(branches):
                    for f in fields:
                        by_branch.update(k, (name, f), one_step[f][taken == code])
            teacher_gap = _leave_out(objective_gap(problem, teacher, target, f_star), out)
            emulated_gap = _leave_out(objective_gap(problem, teacher, state, f_star), out)
            objective.update(k, "teacher", teacher_gap)
            objective.update(k, "emulated", emulated_gap)
            progress.update(k, start, teacher_gap, emulated_gap)
    finally:
        stack.train(mode)

    rollout_errors = _layers(rolled.compute())
    return to_jsonable({
        "layers": num,
        "problems": round(problems.compute().item()),
        "fields": fields,
        "primary": fields[0],
        "threshold": threshold,
        "teacher_forced": _summaries(_layers(forced.compute())),
        "rollout": _summaries(rollout_errors),
        "identity_rollout": _summaries(_layers(held.compute())),
        "objective": _summaries(_layers(objective.compute())),
        "progress_ratio": _summary(_layers(progress.compute())),
        "breakdown_depth": breakdown_depth(rollout_errors[fields[0]]["median"], threshold),
        "branches": _by_branch(branches, _layers(by_branch.compute())) if branches else {},
    })


def _check(num: int, depth: int, problem: Problem, traj: Trajectory, beyond: str) -> None:
    if beyond not in BEYOND:
        raise ValueError(f"evaluate_stack: beyond must be one of {BEYOND}, got {beyond!r}")
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"evaluate_stack: layers must be an int >= 1, got {num!r}")
    if num > traj.steps:
        raise ValueError(
            f"evaluate_stack: {num} layers need a trajectory of at least {num} steps, got "
            f"K = {traj.steps}; roll the teacher out further"
        )
    if num > depth and beyond == "none":
        raise ValueError(
            f"evaluate_stack: {num} layers asked of a stack of {depth} blocks; pass "
            "beyond='last' to repeat the last block past them"
        )
    if traj.diverged.shape[1] != problem.batch_size:
        raise ValueError(
            f"evaluate_stack: the trajectory has {traj.diverged.shape[1]} problems, "
            f"the problem batch {problem.batch_size}"
        )


def _leave_out(values: Tensor, mask: Tensor) -> Tensor:
    """values (B,) with NaN where mask (B,) is True: the metrics drop NaN."""
    return values.masked_fill(mask, math.nan)


def _deciding_code(taken: Tensor) -> Tensor:
    """(B,) the branch code a step's errors are split by: of (B, P) codes, one per moved part
    (parallel NM's vertices, worst last), the last (`Teacher.branches`)."""
    return taken[:, -1] if taken.ndim == 2 else taken


def _by_branch(
    branches: tuple[str, ...], results: dict[tuple[str, str], dict[str, Tensor]]
) -> dict[str, dict]:
    """{(branch, field): result} -> {branch: {field: {"median", "count"}}}."""
    out: dict[str, dict] = {name: {} for name in branches}
    for (name, field), result in results.items():
        out[name][field] = {"median": result["median"], "count": result["count"]}
    return out




def _layers(result: Any) -> Any:
    """A Metric's result with every tensor 1-D: torchmetrics squeezes a one-element result to
    a scalar, which would lose the layer axis of a one-layer stack."""
    if isinstance(result, Tensor):
        return result.reshape(-1)
    return {k: _layers(v) for k, v in result.items()}


def _summary(result: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: result[name] for name in QUANTILES}


def _summaries(results: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    return {key: _summary(result) for key, result in results.items()}


def eval_checkpoint(
    path,
    family: str | None = None,
    dim: int | None = None,
    steps: int | None = None,
    problems: int = 1024,
    seed: int | None = None,
    beyond: str = "last",
    vertex_f: str | None = None,
) -> LayerMetrics:
    """A saved stack re-evaluated on freshly rolled-out test problems, as `evaluate_stack`.

    Args:
        path: the checkpoint directory.
        family: the problem family (default the recipe's); another family takes its own
            default settings, and its problem tokens must fill the same slots as the recipe's
            (in_context codecs differ between most families; oracle ones do not).
        dim: n; must be the recipe's (the token layout depends on n).
        steps: the teacher steps rolled out and layers measured (default the stack's
            depth, which a checkpoint's recipe.steps need not equal).
        problems: how many test problems.
        seed: their seed (default the recipe's test seed); never a training or validation seed
            of the recipe's own family.
        beyond: past the stack's depth, "last" repeats the last block, "none" is an error.
        vertex_f: the Nelder–Mead vertices' f values between layers, "own" or "evaluated"
            (default the recipe's; see `SimplexCodec`): one stack measured both ways.
    """
    config = read_config(path)
    recipe = recipe_from_dict(config["recipe"])
    if vertex_f is not None:
        recipe = dataclasses.replace(
            recipe, codec=dataclasses.replace(recipe.codec, vertex_f=vertex_f)
        )
    own = recipe.problem
    family = own.family if family is None else family
    dim = own.dim if dim is None else dim
    steps = config["depth"] if steps is None else steps
    if steps < 1:
        raise ValueError(f"eval_checkpoint: steps must be at least 1, got {steps}")
    if dim != own.dim:
        raise ValueError(
            f"eval_checkpoint: the stack was trained in n = {own.dim} and cannot read problems "
            f"in n = {dim}: its token layout (coordinate slots, number of vertex or point "
            "tokens, problem tokens) depends on n"
        )
    problem, traj = held_out(recipe, steps, problems, seed, family)
    stack = load_stack(path)
    codec = build_codec(recipe, problem)
    if codec.slots != stack.codec.slots:
        raise ValueError(
            f"eval_checkpoint: {family}'s tokens fill slots {list(codec.slots)}, the stack reads "
            f"{list(stack.codec.slots)}: in {recipe.codec.mode!r} mode the problem tokens are "
            "each family's own; evaluate another family with a stack trained in oracle mode"
        )
    stack.codec = codec  # the same layout, built for this family's problems
    return evaluate_stack(stack, problem, traj, recipe.eval.threshold, steps, beyond)


def held_out(
    recipe: Recipe, steps: int, count: int, seed: int | None = None, family: str | None = None
) -> tuple[Problem, Trajectory]:
    """`count` test problems of the recipe's family (or `family`, with its default settings)
    and the teacher's trajectory of `steps` steps on them, from `seed` (default the recipe's
    test seed), which may be neither the recipe's training nor its validation seed."""
    own = recipe.problem
    family = own.family if family is None else family
    seed = recipe.data.test_seed if seed is None else seed
    if family == own.family and seed in (recipe.data.train_seed, recipe.data.val_seed):
        raise ValueError(
            f"held-out problems: seed {seed} is the recipe's training or validation seed; "
            "numbers come from held-out problems"
        )
    problem = sample_problems(
        family, count, own.dim, seed, **(own.settings if family == own.family else {})
    )
    teacher = teachers.make(recipe.teacher.name, **recipe.teacher.settings)
    traj = rollout(teacher, problem, problem.sample_x0(seed=seed, radius=own.x0_radius), steps)
    return problem, traj
