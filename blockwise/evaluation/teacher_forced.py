"""The teacher-forced error: layer k applied to the teacher's s_{k-1}, decoded, against s_k.

One definition, `one_step_errors`, gives both `evaluate_stack`'s "teacher_forced" and
"branches" entries and the per-block table a run prints after pretraining
(`teacher_forced_errors`), so that metrics.json cannot hold two numbers under one name. It is
taken on the decoded state in original coordinates (a Nelder–Mead simplex re-sorted by its
decoded f values): the state the next layer is given. The error is `blockwise.errors`'
normalized error.

Each number sits beside its controls: the identity ("do nothing", exactly 1 by construction of
the normalized error) and an untrained block.

    rows = teacher_forced_errors({"trained": stack, "untrained": control}, problem, traj)
    print(format_table(rows))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from blockwise.errors import emulation_error
from blockwise.evaluation.metrics import summarize
from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.stack import Stack

IDENTITY = "identity"
"""The label of the "do nothing" control in `teacher_forced_errors`' rows."""


def one_step_errors(
    stack: Stack, problem: Problem, traj: Trajectory, k: int, block: int | None = None
) -> dict[str, Tensor]:
    """Learned field -> (B,) errors of layer `block` (default k) applied to the teacher's
    s_{k-1}, against s_k.

    inf where the emulated field is not finite (a blow-up is the worst error); NaN, which the
    summaries leave out, where the error is not defined (the teacher did not move the field) or
    the problem's trajectory diverged by step k. Runs the stack in the mode it is in.
    """
    prev, target = traj[k - 1], traj[k]
    emulated = stack.layer(k if block is None else block, prev, problem)
    out = traj.diverged[k]
    return {
        f: emulation_error(emulated[f], target[f], prev[f]).masked_fill(out, math.nan)
        for f in stack.codec.learned_fields
    }


@torch.no_grad()
def teacher_forced_errors(
    stacks: dict[str, Stack], problem: Problem, traj: Trajectory
) -> list[dict]:
    """Each stack's teacher-forced error at layers k = 1..K, beside the identity control.

    Args:
        stacks: label -> a stack of K layers ("trained", "untrained", say), all of one codec;
            each runs in eval mode and is handed back in the mode it came in.
        problem, traj: B test problems and the teacher's trajectory on them, K steps or more.
    Returns:
        per layer k: {"layer": k, "count": problems whose trajectory had not diverged by step
        k, "fields": {field: {label: summary for each stack, then "identity": summary}}}, a
        summary being `metrics.summarize`'s {"median", "p10", "p90", "count"}.
    """
    depth = _check(stacks, traj)
    fields = next(iter(stacks.values())).codec.learned_fields
    modes = {label: stack.training for label, stack in stacks.items()}
    rows = []
    try:
        for stack in stacks.values():
            stack.eval()
        for k in range(1, depth + 1):
            errors = {label: one_step_errors(s, problem, traj, k) for label, s in stacks.items()}
            errors[IDENTITY] = _identity_errors(traj, k, fields)
            rows.append({
                "layer": k,
                "count": int((~traj.diverged[k]).sum()),
                "fields": {f: {label: summarize(e[f]) for label, e in errors.items()}
                           for f in fields},
            })
    finally:
        for label, stack in stacks.items():
            stack.train(modes[label])
    return rows


def _identity_errors(traj: Trajectory, k: int, fields) -> dict[str, Tensor]:
    """The "do nothing" prediction s_{k-1} of each field, scored as `one_step_errors` scores a
    layer."""
    prev, target, out = traj[k - 1], traj[k], traj.diverged[k]
    return {
        f: emulation_error(prev[f], target[f], prev[f]).masked_fill(out, math.nan) for f in fields
    }


def _check(stacks: dict[str, Stack], traj: Trajectory) -> int:
    """The stacks' common depth K, checked against the trajectory's steps."""
    if not stacks or IDENTITY in stacks:
        raise ValueError(f"teacher_forced_errors: give one or more stacks, none labelled "
                         f"{IDENTITY!r} (the control added to each row), got {list(stacks)}")
    depths = {label: stack.depth for label, stack in stacks.items()}
    if len(set(depths.values())) != 1:
        raise ValueError(f"teacher_forced_errors: the stacks differ in depth: {depths}")
    depth = next(iter(depths.values()))
    if depth > traj.steps:
        raise ValueError(f"teacher_forced_errors: {depth} layers need a trajectory of at least "
                         f"{depth} steps, got K = {traj.steps}")
    return depth


def format_table(rows: list[dict]) -> str:
    """The per-block errors as a text table: median [p10, p90] per field and stack, then the
    identity control's median."""
    first = next(iter(rows[0]["fields"].values())) if rows else {}
    labels = [label for label in first if label != IDENTITY]
    span = lambda s: f"{s['median']:.3g} [{s['p10']:.2g}, {s['p90']:.2g}]"  # noqa: E731
    lines = [f"{'block':>5}  {'field':<8} " + " ".join(f"{lb:>24}" for lb in labels)
             + f" {IDENTITY:>10}"]
    for row in rows:
        for field, by_label in row["fields"].items():
            cells = " ".join(f"{span(by_label[lb]):>24}" for lb in labels)
            lines.append(f"{row['layer']:>5}  {field:<8} {cells} "
                         f"{by_label[IDENTITY]['median']:>10.3g}")
    return "\n".join(lines)
