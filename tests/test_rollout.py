"""Rollouts of every registered teacher: determinism, batching, divergence, bad input."""

from __future__ import annotations

import pytest
import torch

import blockwise
from blockwise import problems


def _setup(dtype=torch.float64, batch=6, dim=3):
    problem = problems.make("quadratic", batch=batch, dim=dim, seed=11, condition=30.0)
    return problem, problem.sample_x0(seed=12, dtype=dtype)


def test_same_inputs_give_bitwise_equal_trajectories(teacher):
    problem, x0 = _setup()
    a = blockwise.rollout(teacher, problem, x0, steps=25)
    b = blockwise.rollout(teacher, problem, x0, steps=25)
    for name in a.states:
        assert torch.equal(a.states[name], b.states[name]), name
    for name in a.extras:
        assert torch.equal(a.extras[name], b.extras[name]), name


def test_trajectory_layout(teacher):
    problem, x0 = _setup()
    traj = blockwise.rollout(teacher, problem, x0, steps=7)
    assert traj.steps == 7 and len(traj) == 8
    assert traj.diverged.shape == (8, 6) and not traj.diverged.any()
    s0 = teacher.init(problem, x0)
    for name, value in s0.items():
        assert traj.states[name].shape == (8,) + value.shape
        assert torch.equal(traj[0][name], value), name
    for value in traj.extras.values():
        assert value.shape[:2] == (7, 6)


def test_the_teacher_makes_progress(teacher):
    """Independent check that the teacher optimizes: f at the incumbent falls well below f(x0)."""
    problem, x0 = _setup()
    traj = blockwise.rollout(teacher, problem, x0, steps=60)
    start = problems.evaluate(problem, x0[:, None, :])[:, 0]
    end = problems.evaluate(problem, teacher.incumbent(traj[60])[:, None, :])[:, 0]
    assert (end < 0.1 * start).all(), (start, end)


def test_float32_batch_equals_rows_one_by_one(teacher):
    problem, x0 = _setup(dtype=torch.float32)
    batched = blockwise.rollout(teacher, problem, x0, steps=15)
    for b in range(x0.shape[0]):
        row = blockwise.rollout(teacher, problem[b], x0[b : b + 1], steps=15)
        for name, value in row.states.items():
            torch.testing.assert_close(
                value[:, 0], batched.states[name][:, b], rtol=1e-5, atol=1e-6
            )


def test_overflowing_objective_marks_divergence_and_freezes_the_state(teacher):
    problem, x0 = _setup()
    blowup = torch.zeros(x0.shape[0], dtype=torch.bool)
    blowup[[1, 4]] = True

    def objective(x):
        f = problem(x)
        # Problems 1 and 4 overflow to -inf (an objective unbounded below) once a point leaves
        # a ball around x0 that holds the initial simplex: s_0 is finite, a later state is not.
        # (NaN would not do: Nelder-Mead never accepts a NaN vertex, as scipy does not.)
        far = (x - x0[:, None, :]).norm(dim=-1) > 0.2
        return torch.where(blowup[:, None] & far, torch.full_like(f, -float("inf")), f)

    traj = blockwise.rollout(teacher, objective, x0, steps=30)
    assert traj.diverged[-1].tolist() == blowup.tolist()
    for name, value in traj.states.items():
        if value.is_floating_point():
            assert torch.isfinite(value[:, ~blowup]).all(), name
    first = int(traj.diverged[:, 1].nonzero()[0])
    assert first >= 1
    for name, value in traj.states.items():
        assert (value[first:, 1] == value[first - 1, 1]).all(), f"{name} moved after diverging"


def test_teacher_by_name_and_bad_steps():
    problem, x0 = _setup()
    traj = blockwise.rollout("nelder_mead", problem, x0, steps=2)
    assert traj.steps == 2
    with pytest.raises(ValueError, match="steps"):
        blockwise.rollout("nelder_mead", problem, x0, steps=-1)
    with pytest.raises(ValueError, match="unknown teacher 'nelder_meat'"):
        blockwise.rollout("nelder_meat", problem, x0, steps=2)


def test_bad_x0_is_named(teacher):
    problem, x0 = _setup()
    with pytest.raises(ValueError, match="x0"):
        teacher.init(problem, x0[0])
    bad = x0.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="x0"):
        teacher.init(problem, bad)


def test_objective_with_wrong_output_shape_is_named(teacher):
    problem, x0 = _setup()
    with pytest.raises(ValueError, match=r"expected shape"):
        blockwise.rollout(teacher, lambda x: problem(x).sum(-1), x0, steps=1)
