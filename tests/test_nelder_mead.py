"""nelder_mead against scipy.optimize.minimize(method="Nelder-Mead"), iteration by iteration.

scipy calls the same torch objective one point at a time, so f values agree to rounding (batched
and single-point evaluation may differ in the last bits) and the simplex agrees exactly.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy_nm import (
    BATCH,
    assert_no_ties,
    assert_states_equal,
    make_problem,
    point_objective,
    run_scipy,
    separable,
)

import blockwise
from blockwise import problems, teachers
from blockwise.teachers.nelder_mead import NelderMead

STEPS = 120


@functools.cache
def scipy_traces(family: str, n: int, adaptive: bool):
    """The problem, its objective maker, x0 and scipy's traces of STEPS iterations."""
    problem, objective_of, x0 = make_problem(family, n)
    traces = []
    for b in range(BATCH):
        f = point_objective(objective_of(problem), b, BATCH)
        trace = run_scipy(f, x0[b].numpy(), STEPS, adaptive, tol=0.0)
        assert len(trace.nfev) == STEPS + 1
        assert_no_ties(trace.fvals)
        traces.append(trace)
    return problem, objective_of, x0, traces


# At n = 2 Gao & Han's coefficients are the standard ones, so adaptive runs only for n > 2.
CASES = pytest.mark.parametrize(
    "family, n, adaptive",
    [
        (f, n, a)
        for f in ("quadratic", "rosenbrock", "sawtooth")
        for n in (2, 3, 5, 10)
        for a in (False, True)
        if n > 2 or not a
    ],
)


@CASES
def test_free_running_equals_scipy(family, n, adaptive):
    problem, objective_of, x0, traces = scipy_traces(family, n, adaptive)
    traj = blockwise.rollout(NelderMead(adaptive=adaptive), objective_of(problem), x0, STEPS)
    for b, trace in enumerate(traces):
        assert_states_equal(
            {k: v[:, b] for k, v in traj.states.items()}, trace.simplex, trace.fvals, trace.nfev
        )
        assert np.array_equal(traj.extras["branch"][:, b].numpy(), trace.branch)
        assert np.array_equal(traj.extras["evals"][:, b].numpy(), np.diff(trace.nfev))
    assert not traj.states["done"].any()


@CASES
def test_teacher_forced_equals_scipy(family, n, adaptive):
    """scipy's state at every t, stepped at once as a batch, gives scipy's state at t+1."""
    problem, objective_of, _, traces = scipy_traces(family, n, adaptive)
    teacher = NelderMead(adaptive=adaptive)
    for b, trace in enumerate(traces):
        state = {
            "simplex": torch.from_numpy(trace.simplex[:-1]),
            "fvals": torch.from_numpy(trace.fvals[:-1]),
            "nfev": torch.from_numpy(trace.nfev[:-1]),
            "done": torch.zeros(STEPS, dtype=torch.bool),
        }
        new, extras = teacher.step(objective_of(problem[torch.full((STEPS,), b)]), state)
        assert_states_equal(new, trace.simplex[1:], trace.fvals[1:], trace.nfev[1:])
        assert np.array_equal(extras["branch"].numpy(), trace.branch)


def test_every_branch_is_compared():
    """The cases above meet every branch, shrinks included, many times over."""
    counts = np.zeros(6, dtype=np.int64)
    for family, n, adaptive in [(f, n, False) for f in ("rosenbrock", "sawtooth") for n in (3, 5)]:
        for trace in scipy_traces(family, n, adaptive)[-1]:
            counts += np.bincount(trace.branch, minlength=6)
    assert (counts >= 10).all(), counts


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("adaptive", [False, True])
def test_termination_equals_scipy(n, adaptive):
    """With xatol = fatol = 1e-4, done is set at the step where scipy's loop stops."""
    problem = problems.make("quadratic", BATCH, n, seed=500 + n, condition=10.0)
    x0 = problem.sample_x0(seed=600 + n)
    traces = [
        run_scipy(point_objective(problem, b, BATCH), x0[b].numpy(), None, adaptive, tol=1e-4)
        for b in range(BATCH)
    ]
    passes = [len(t.nfev) - 1 for t in traces]
    teacher = NelderMead(adaptive=adaptive, xatol=1e-4, fatol=1e-4)
    traj = blockwise.rollout(teacher, problem, x0, max(passes) + 3)
    for b, (trace, p) in enumerate(zip(traces, passes, strict=True)):
        assert_no_ties(trace.fvals)
        states = {k: v[:, b] for k, v in traj.states.items()}
        assert_states_equal(
            {k: v[: p + 1] for k, v in states.items()}, trace.simplex, trace.fvals, trace.nfev
        )
        # scipy counts iterations from 1: nit = passes + 1 = the index of the first done state.
        assert int(states["done"].long().argmax()) == p + 1 == trace.result.nit
        assert not states["done"][: p + 1].any() and states["done"][p + 1 :].all()
        final_simplex, final_f = trace.result.final_simplex
        assert np.array_equal(states["simplex"][-1].numpy(), final_simplex)
        np.testing.assert_allclose(states["fvals"][-1].numpy(), final_f, rtol=1e-12, atol=0)
        assert int(states["nfev"][-1]) == trace.result.nfev
        assert (traj.extras["branch"][p:, b] == -1).all()
        assert (traj.extras["evals"][p:, b] == 0).all()


def test_nan_values_take_scipy_branches():
    """f is NaN beyond the minimizer (seen from x0): NaN fails every comparison, as in scipy."""
    n = 3
    problem = problems.make("quadratic", BATCH, n, seed=700, condition=10.0)
    x0 = problem.sample_x0(seed=701)
    x_opt = problem.params["x_opt"]
    side = torch.sign(x0[:, 0] - x_opt[:, 0])

    def objective(x):
        beyond = (x[..., 0] - x_opt[:, None, 0]) * side[:, None] < 0
        return torch.where(beyond, torch.full_like(x[..., 0], float("nan")), problem(x))

    traj = blockwise.rollout(NelderMead(), objective, x0, 60)
    for b in range(BATCH):
        f = point_objective(problem, b, BATCH)
        xo, s = float(x_opt[b, 0]), float(side[b])

        def masked(x, f=f, xo=xo, s=s):
            return float("nan") if (x[0] - xo) * s < 0 else f(x)

        trace = run_scipy(masked, x0[b].numpy(), 60, adaptive=False, tol=0.0)
        assert sum(np.isnan(v) for _, v in trace.calls) >= 5
        assert_states_equal(
            {k: v[:, b] for k, v in traj.states.items()}, trace.simplex, trace.fvals, trace.nfev
        )
    assert not traj.diverged.any()


def test_initial_simplex_is_scipys():
    """Relative 5% steps, and 0.00025 for a zero component; nfev = n+1."""
    x0 = torch.tensor([[0.0, 2.0, -4.0]], dtype=torch.float64)
    state = NelderMead().init(lambda x: (x * x).sum(-1), x0)
    vertices = {tuple(v) for v in state["simplex"][0].tolist()}
    assert vertices == {(0.0, 2.0, -4.0), (0.00025, 2.0, -4.0), (0.0, 2.1, -4.0), (0.0, 2.0, -4.2)}
    assert torch.equal(state["fvals"][0], (state["simplex"][0] ** 2).sum(-1))
    assert state["fvals"][0].diff().ge(0).all() and state["nfev"].tolist() == [4]


@pytest.mark.parametrize("family", ["quadratic", "rosenbrock", "sawtooth"])
def test_batch_equals_rows_one_by_one(family):
    """float64 exactly, float32 to rounding."""
    for dtype in (torch.float64, torch.float32):
        problem, objective_of, x0 = make_problem(family, 3, dtype=dtype)
        teacher = NelderMead(adaptive=True)
        batched = blockwise.rollout(teacher, objective_of(problem), x0, 30)
        assert batched.states["simplex"].dtype == dtype == batched.states["fvals"].dtype
        for b in range(BATCH):
            row = blockwise.rollout(teacher, objective_of(problem[b]), x0[b : b + 1], 30)
            for name in batched.states:
                if dtype == torch.float64:
                    assert torch.equal(row.states[name][:, 0], batched.states[name][:, b]), name
                else:
                    torch.testing.assert_close(row.states[name][:, 0], batched.states[name][:, b])


def test_bad_input_is_named():
    problem, _, x0 = make_problem("quadratic", 3)
    teacher = NelderMead()
    with pytest.raises(ValueError, match="x0 must have shape"):
        teacher.init(problem, x0[0])
    bad = x0.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x0 has non-finite entries in rows \[1\]"):
        teacher.init(problem, bad)
    with pytest.raises(ValueError, match="unknown setting.*'alpha'"):
        teachers.make("nelder_mead", alpha=2.0)
    with pytest.raises(ValueError, match="both xatol and fatol"):
        teachers.make("nelder_mead", xatol=1e-4)
    with pytest.raises(ValueError, match="fatol must be"):
        NelderMead(xatol=1e-4, fatol=-1.0)
    with pytest.raises(ValueError, match="adaptive must be a bool"):
        NelderMead(adaptive="yes")
    state = teacher.init(problem, x0)
    with pytest.raises(ValueError, match="lacks field.*'done'"):
        teacher.step(problem, {k: v for k, v in state.items() if k != "done"})
    with pytest.raises(ValueError, match="expected shape"):
        teacher.step(lambda x: problem(x)[:, :1], state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_equals_cpu(dtype):
    x0 = torch.linspace(-1.5, 2.0, 4 * 6, dtype=dtype).reshape(4, 6)
    teacher = NelderMead(adaptive=True)
    cpu = blockwise.rollout(teacher, separable, x0, 150)
    gpu = blockwise.rollout(teacher, separable, x0.cuda(), 150)
    for name in cpu.states:
        assert torch.equal(cpu.states[name], gpu.states[name].cpu()), name
    assert torch.equal(cpu.extras["branch"], gpu.extras["branch"].cpu())
    assert (cpu.extras["branch"] == 5).any()  # shrinks and contractions included
