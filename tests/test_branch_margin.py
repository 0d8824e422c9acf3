"""Error by branch and by margin: the margin recomputed by scipy's if-tree in plain Python, and
the chosen branch checked on layers whose branch is known."""

from __future__ import annotations

import math

import torch

from blockwise import problems, teachers
from blockwise.build import build_codec
from blockwise.config import load_recipe
from blockwise.evaluation.branch_margin import margins, step_records, summarize_steps, trial_f
from blockwise.evaluation.perturbed import PerturbedTeacher
from blockwise.problems import evaluate
from blockwise.rollout import rollout
from blockwise.teachers.nelder_mead import sort_simplex


def _scipy_branch(f, fr, fe, fc, fcc) -> int:
    """The branch code scipy's loop takes (scipy/optimize/_optimize.py, _minimize_neldermead),
    for the codes of `teachers.nelder_mead.BRANCHES`."""
    if fr < f[0]:
        return 0 if fe < fr else 1
    if fr < f[-2]:
        return 2
    if fr < f[-1]:
        return 3 if fc <= fr else 5
    return 4 if fcc < f[-1] else 5


def _scipy_margin(f, fr, fe, fc, fcc) -> float:
    """The smallest |difference| of scipy's comparisons on its path that decide the next
    simplex, over f_n - f_0."""
    diffs = [abs(fr - f[-2]), abs(fr - f[-1])]
    if fe < fr:  # the expansion would be kept: which side of f_0 f_r falls matters
        diffs.append(abs(fr - f[0]))
    if fr < f[0]:
        diffs.append(abs(fe - fr))
    elif fr < f[-2]:
        pass
    elif fr < f[-1]:
        diffs.append(abs(fc - fr))
    else:
        diffs.append(abs(fcc - f[-1]))
    return min(diffs) / (f[-1] - f[0])


def test_margin_is_the_closest_comparison_on_scipys_path():
    g = torch.Generator().manual_seed(0)
    f = torch.rand(500, 3, generator=g, dtype=torch.float64).sort(dim=1).values
    fr, fe, fc, fcc = (torch.rand(500, generator=g, dtype=torch.float64) * 1.4 - 0.2
                       for _ in range(4))
    got = margins(f, fr, fe, fc, fcc)
    for b in range(500):
        want = _scipy_margin(f[b].tolist(), fr[b].item(), fe[b].item(), fc[b].item(),
                             fcc[b].item())
        assert math.isclose(got[b].item(), want, rel_tol=1e-12)


def test_the_trial_f_values_reproduce_the_teachers_branches():
    codec, problem, traj = _setup()
    for k in range(1, traj.steps + 1):
        prev, codes = traj[k - 1], traj.extras["branch"][k - 1]
        trials = trial_f(problem, codec.teacher.trial_points(prev["simplex"]))
        for b in range(len(codes)):
            if codes[b] >= 0:
                args = (prev["fvals"][b].tolist(), *(t[b].item() for t in trials))
                assert _scipy_branch(*args) == codes[b], (k, b)


def _setup(steps: int = 8):
    recipe = load_recipe("recipes/nelder_mead_2d_oracle.yaml")
    problem = problems.make("quadratic", 128, 2, 5, condition=10.0)
    teacher = teachers.make("nelder_mead")
    traj = rollout(teacher, problem, problem.sample_x0(seed=6), steps)
    return build_codec(recipe, problem), problem, traj


def test_the_exact_teacher_takes_every_branch_right():
    codec, problem, traj = _setup()
    exact = PerturbedTeacher(codec, 0.0, traj.steps)
    records = [step_records(exact, problem, traj, k) for k in range(1, traj.steps + 1)]
    summary = summarize_steps(records)
    assert summary["wrong_rate"] == 0.0
    assert summary["error"]["p90"] < 1e-9
    assert summary["steps"] == traj.steps * 128
    codes = {int(c) for c in traj.extras["branch"].unique()}
    assert len(codes) >= 4  # expand, both reflects and a contraction occur in 8 steps


class AlwaysReflects:
    """A layer that always moves the worst vertex to its reflection, sorted by f as a stack's
    decode sorts."""

    depth = 8

    def __init__(self, codec):
        self.codec = codec

    def layer(self, k, state, problem):
        reflect = self.codec.teacher.trial_points(state["simplex"])["reflect"]
        simplex = torch.cat([state["simplex"][:, :-1], reflect], dim=1)
        simplex, _ = sort_simplex(simplex, evaluate(problem, simplex))
        return {"simplex": simplex}


def test_a_layer_that_always_reflects_is_wrong_where_the_teacher_does_not():
    codec, problem, traj = _setup()
    records = [step_records(AlwaysReflects(codec), problem, traj, k)
               for k in range(1, traj.steps + 1)]
    assert all(bool((r["chosen"] == 1).all()) for r in records)
    codes = traj.extras["branch"]  # (K, B); 1 and 2 are the two reflect codes
    summary = summarize_steps(records)
    want = ((codes != 1) & (codes != 2)).double().mean().item()
    assert summary["wrong_rate"] == want
    assert 0.2 < want < 0.9
    assert summary["error_right"]["p90"] < 1e-9
