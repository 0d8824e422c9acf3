"""The perturbed teacher: the teacher's step plus an error of known size, a stack-shaped control
for the depth that per-step accuracy alone explains."""

from __future__ import annotations

import pytest
import torch

from blockwise import problems, teachers
from blockwise.build import build_codec
from blockwise.config import load_recipe
from blockwise.errors import emulation_error
from blockwise.evaluation import evaluate_stack
from blockwise.evaluation.perturbed import PerturbedTeacher
from blockwise.rollout import rollout

RECIPES = {"nelder_mead": "recipes/nelder_mead_2d.yaml", "gd": "recipes/gd_least_squares.yaml"}


def _setup(which: str, batch: int = 64, steps: int = 6):
    recipe = load_recipe(RECIPES[which])
    own = recipe.problem
    problem = problems.make(own.family, batch, own.dim, 5, **own.settings)
    teacher = teachers.make(recipe.teacher.name, **recipe.teacher.settings)
    traj = rollout(teacher, problem, problem.sample_x0(seed=6, radius=own.x0_radius), steps)
    return build_codec(recipe, problem), problem, traj


@pytest.mark.parametrize("which", sorted(RECIPES))
def test_zero_eps_rolls_out_the_teacher(which):
    codec, problem, traj = _setup(which)
    metrics = evaluate_stack(PerturbedTeacher(codec, 0.0, traj.steps), problem, traj)
    field = metrics["primary"]
    assert max(metrics["rollout"][field]["p90"]) < 1e-9
    assert max(metrics["teacher_forced"][field]["p90"]) < 1e-9
    assert metrics["breakdown_depth"] is None
    assert min(metrics["progress_ratio"]["median"]) == pytest.approx(1.0, abs=1e-9)


def test_each_problem_gets_its_own_eps_at_each_layer():
    codec, problem, traj = _setup("gd")
    eps = torch.rand(traj.steps, problem.batch_size, generator=torch.Generator().manual_seed(1))
    stack = PerturbedTeacher(codec, eps, traj.steps)
    for k in range(1, traj.steps + 1):
        prev = traj[k - 1]["x"].double()
        out = stack.layer(k, traj[k - 1], problem)["x"].double()
        # GD's step recomputed in float64 from the objective's gradient, not from the teacher.
        x = prev.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(problem(x[:, None])[:, 0].sum(), x)
        exact = prev - codec.teacher.lr * grad
        miss = (out - exact).norm(dim=1) / (exact - prev).norm(dim=1)
        assert torch.allclose(miss, eps[k - 1].double(), rtol=1e-6, atol=1e-9)


def test_offsets_point_every_way():
    codec, problem, traj = _setup("gd", batch=4096, steps=1)
    stack = PerturbedTeacher(codec, 1.0, 1)
    move = traj[1]["x"] - traj[0]["x"]
    offset = stack.layer(1, traj[0], problem)["x"] - traj[1]["x"]
    unit = (offset / move.norm(dim=1, keepdim=True)).double()  # (B, d), unit rows
    dim = unit.shape[1]
    assert unit.mean(dim=0).abs().max() < 4 / (dim * unit.shape[0]) ** 0.5
    isotropic = torch.eye(dim, dtype=unit.dtype) / dim  # E[u u^T] of a uniform unit vector
    assert torch.allclose(unit.T @ unit / unit.shape[0], isotropic, atol=0.01)


def test_a_simplex_keeps_the_stacks_bookkeeping():
    codec, problem, traj = _setup("nelder_mead")
    assert codec.vertex_f == "evaluated"
    out = PerturbedTeacher(codec, 0.3, traj.steps).layer(3, traj[2], problem)
    # Perturbed by 0.3 of the step: exactly, wherever the re-sort kept the teacher's order.
    miss = emulation_error(out["simplex"], traj[3]["simplex"], traj[2]["simplex"])
    assert ((miss - 0.3).abs() < 1e-9).float().mean() > 0.6  # 46 of 64 here
    assert torch.allclose(out["fvals"], problem(out["simplex"]), rtol=1e-12, atol=0)
    assert (out["fvals"].diff(dim=1) >= 0).all()


@pytest.mark.parametrize("eps, depth", [(-0.1, 3), (float("nan"), 3), ([0.1, 0.2], 3)])
def test_bad_eps_is_refused(eps, depth):
    codec, _, _ = _setup("gd", batch=4, steps=1)
    with pytest.raises(ValueError, match="perturbed teacher"):
        PerturbedTeacher(codec, eps, depth)
