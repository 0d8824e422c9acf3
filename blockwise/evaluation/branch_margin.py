"""Error by branch and by distance to the nearest branch boundary, for Nelder–Mead stacks.

A Nelder–Mead step is a decision (reflect, expand, outside or inside contraction, shrink) and
then an exact formula, so a layer's one-step error has two sources: taking another branch than
the teacher, and placing the chosen branch's point imprecisely. Teacher-forced at step k:

- margin: how close the teacher's decision came to going another way. Each comparison scipy
  makes on the path it took whose other outcome gives another next simplex (f_r against f_0,
  where f_e < f_r; f_r against f_{n-1} and f_n; then f_e < f_r, f_c <= f_r or f_cc < f_n,
  whichever the path tests), as |difference| / (f_n - f_0), the spread of f over the simplex,
  which is the frame's f unit a block sees; the margin is the smallest of them.
- chosen branch: the branch whose next simplex (kept vertices plus that branch's point, or the
  shrunk simplex) lies nearest the layer's output, as sets of vertices. A "wrong branch" step
  is one where it differs from the teacher's.

    records = [step_records(stack, problem, traj, k) for k in range(1, K + 1)]
    summary = summarize_steps(records)   # wrong-branch rate and errors per margin bin, branch

`benchmarks/branch_margin.py` runs it on a checkpoint. P = 1 (scipy's Nelder–Mead) only.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from blockwise.codec.base import MAX_SET_ORDERS
from blockwise.errors import emulation_error
from blockwise.evaluation.metrics import summarize
from blockwise.problems import Problem, evaluate
from blockwise.rollout import Trajectory
from blockwise.teachers.nelder_mead import BRANCHES

BINS = (0.0, 1e-3, 1e-2, 1e-1, float("inf"))
"""Margin bins, in units of the simplex's spread of f."""
CANDIDATES = ("expand", "reflect", "outside_contraction", "inside_contraction", "shrink")
"""The distinct next simplices; both reflect codes (after a failed expansion, and plain) give
the same one."""
CANDIDATE_OF_CODE = (0, 1, 1, 2, 3, 4)
"""Teacher branch code 0..5 -> index into CANDIDATES."""


def margins(f: Tensor, fr: Tensor, fe: Tensor, fc: Tensor, fcc: Tensor) -> Tensor:
    """(B,) the smallest |difference| among the comparisons on scipy's path that decide the
    next simplex, over f_n - f_0; f values in the problem's own units (the ratio is the same
    in any frame).

    f: (B, n+1) the sorted simplex's f values; fr, fe, fc, fcc: (B,) f at the reflected,
    expanded, outside- and inside-contracted points.
    """
    f0, fprev, fworst = f[:, 0], f[:, -2], f[:, -1]
    inf = torch.full_like(fr, float("inf"))
    # f_r crossing f_0 changes the step only where the expansion would be kept (f_e < f_r):
    # otherwise both sides reflect.
    best = torch.where(fe < fr, (fr - f0).abs(), inf)
    place = torch.stack([best, (fr - fprev).abs(), (fr - fworst).abs()]).amin(0)
    second = torch.where(
        fr < f0, (fe - fr).abs(),
        torch.where(fr < fprev, inf,
                    torch.where(fr < fworst, (fc - fr).abs(), (fcc - fworst).abs())))
    return torch.minimum(place, second) / (fworst - f0)


def trial_f(problem: Problem, points: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """(f_r, f_e, f_c, f_cc), each (B,): f at the trial points of `NelderMead.trial_points`."""
    trials = torch.cat([points[kind][:, :1] for kind in ("reflect", "expand", "contract_out",
                                                         "contract_in")], dim=1)
    return evaluate(problem, trials).to(trials.dtype).unbind(1)


def candidate_simplices(simplex: Tensor, points: dict[str, Tensor]) -> Tensor:
    """(C, B, n+1, n) the next simplex under each of CANDIDATES, unsorted (compared as sets)."""
    kept = simplex[:, :-1]
    moved = [points[k][:, 0] for k in ("expand", "reflect", "contract_out", "contract_in")]
    out = [torch.cat([kept, p[:, None]], dim=1) for p in moved]
    out.append(torch.cat([simplex[:, :1], points["shrink"]], dim=1))
    return torch.stack(out)


def set_distance(a: Tensor, b: Tensor) -> Tensor:
    """(..., B) the least Frobenius distance between vertex sets a (B, m, n) and b (..., B, m,
    n) over the orders of a's vertices."""
    m = a.shape[-2]
    if math.factorial(m) > MAX_SET_ORDERS:
        raise ValueError(f"{m} vertices have {math.factorial(m)} orders; set_distance tries "
                         f"at most {MAX_SET_ORDERS}")
    best = None
    for perm in itertools.permutations(range(m)):
        d = (a[:, list(perm)] - b).flatten(-2).norm(dim=-1)
        best = d if best is None else torch.minimum(best, d)
    return best


@torch.no_grad()
def step_records(stack, problem: Problem, traj: Trajectory, k: int) -> dict[str, Tensor]:
    """Per problem (B,) at step k, teacher-forced: "error" the simplex's normalized error,
    "margin" (`margins`), "teacher" and "chosen" candidate (indices into CANDIDATES), "code"
    the teacher's branch code (-1 where it had stopped), "out" whether the step is left out
    (stopped or diverged). Errors are in the problem's coordinates, as `blockwise eval`'s."""
    prev, target = traj[k - 1], traj[k]
    points = stack.codec.teacher.trial_points(prev["simplex"])
    emulated = stack.layer(min(k, stack.depth), prev, problem)
    code = traj.extras["branch"][k - 1]
    chosen = set_distance(emulated["simplex"],
                          candidate_simplices(prev["simplex"], points)).argmin(0)
    return {
        "error": emulation_error(emulated["simplex"], target["simplex"], prev["simplex"]),
        "margin": margins(prev["fvals"], *trial_f(problem, points)),
        "teacher": torch.tensor(CANDIDATE_OF_CODE)[code.clamp(min=0)],
        "code": code,
        "chosen": chosen,
        "out": traj.diverged[k] | (code < 0),
    }


def summarize_steps(records: list[dict[str, Tensor]]) -> dict:
    """Over the records of some steps: the wrong-branch rate, the simplex's error (right and
    wrong branch) per margin bin, and per branch the error on right-branch steps (its precision
    floor)."""
    cat = {key: torch.cat([r[key] for r in records]) for key in records[0]}
    keep = ~cat["out"] & ~cat["error"].isnan()  # a blown-up (inf) error is kept
    error, margin = cat["error"][keep], cat["margin"][keep]
    wrong = (cat["chosen"] != cat["teacher"])[keep]
    code = cat["code"][keep]
    bins = []
    for lo, hi in itertools.pairwise(BINS):
        inside = (margin >= lo) & (margin < hi)
        bins.append({
            "margin": [lo, hi if hi < float("inf") else None],  # None: unbounded
            "share": inside.double().mean().item(),
            "wrong_rate": wrong[inside].double().mean().item() if inside.any() else None,
            "error": summarize(error[inside]),
            "error_right": summarize(error[inside & ~wrong]),
            "error_wrong": summarize(error[inside & wrong]),
        })
    floors = {name: summarize(error[(code == c) & ~wrong]) for c, name in enumerate(BRANCHES)}
    return {
        "steps": len(error),
        "wrong_rate": wrong.double().mean().item(),
        "error": summarize(error),
        "error_right": summarize(error[~wrong]),
        "bins": bins,
        "right_by_branch": floors,
    }
