"""parallel_nelder_mead: P = 1 with scipy's rules against scipy itself; P > 1 and the paper's
rules against a plain per-vertex loop written here from Lee & Wiswall (2007), Section 3."""

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
from blockwise import teachers
from blockwise.teachers.parallel_nelder_mead import ParallelNelderMead

STEPS = 60


def reference_step(f, sim: np.ndarray, fsim: np.ndarray, p: int, rules: str, adaptive: bool):
    """One step on one problem, one vertex at a time: (sim, fsim) sorted -> (sim, fsim, codes,
    evaluations). Branch codes as in the teacher: 0 expansion kept, 1 reflection after the
    expansion test, 2 reflection, 3 / 4 contraction kept (outside or Ã = AR / inside or Ã = A_j),
    5 contraction failed."""
    n = sim.shape[1]
    if rules == "scipy":  # scipy's coefficients; Gao & Han (2012) when adaptive
        rho, chi, psi, sigma = (
            (1, 1 + 2 / n, 0.75 - 1 / (2 * n), 1 - 1 / n) if adaptive else (1, 2, 0.5, 0.5)
        )
    else:  # the paper's footnote 3
        alpha, gamma, beta, tau = 1.0, 1.0, 0.5, 0.5
    keep = n + 1 - p
    m = sim[0].copy()
    for i in range(1, keep):
        m = m + sim[i]
    m = m / keep
    calls = 0

    def f_count(x):
        nonlocal calls
        calls += 1
        return f(x)

    new, fnew, codes = sim.copy(), fsim.copy(), []
    for j in range(keep, n + 1):
        a, fa, f_prev = sim[j], fsim[j], fsim[j - 1]
        if rules == "scipy":
            xr = (1 + rho) * m - rho * a
            fr = f_count(xr)
            if fr < fsim[0]:
                xe = (1 + rho * chi) * m - rho * chi * a
                fe = f_count(xe)
                x, fx, code = (xe, fe, 0) if fe < fr else (xr, fr, 1)
            elif fr < f_prev:
                x, fx, code = xr, fr, 2
            elif fr < fa:
                xc = (1 + psi * rho) * m - psi * rho * a
                fc = f_count(xc)
                x, fx, code = (xc, fc, 3) if fc <= fr else (a, fa, 5)
            else:
                xcc = (1 - psi) * m + psi * a
                fcc = f_count(xcc)
                x, fx, code = (xcc, fcc, 4) if fcc < fa else (a, fa, 5)
        else:
            ar = m + alpha * (m - a)
            fr = f_count(ar)
            if fr < fsim[0]:  # case 1
                ae = ar + gamma * (ar - m)
                fe = f_count(ae)
                x, fx, code = (ae, fe, 0) if fe < fsim[0] else (ar, fr, 1)
            elif fr < f_prev:  # case 2
                x, fx, code = ar, fr, 2
            else:  # case 3
                tilde, f_tilde, code = (ar, fr, 3) if fr < fa else (a, fa, 4)
                ac = m + beta * (tilde - m)
                fc = f_count(ac)
                x, fx, code = (ac, fc, code) if fc < f_tilde else (tilde, f_tilde, 5)
        new[j], fnew[j] = x, fx
        codes.append(code)
    if all(code == 5 for code in codes):
        for i in range(1, n + 1):  # `new` holds A_j (scipy) or Ã_j (paper) for the P worst
            if rules == "scipy":
                new[i] = sim[0] + sigma * (new[i] - sim[0])
            else:
                new[i] = tau * sim[0] + (1 - tau) * new[i]
            fnew[i] = f_count(new[i])
    order = np.argsort(fnew, kind="stable")
    return new[order], fnew[order], codes, calls


def reference_simplex(x0: np.ndarray, step: float | None) -> np.ndarray:
    """scipy's initial simplex (step None) or the paper's x0 + step e_k: (n+1, n)."""
    sim = [x0]
    for k in range(len(x0)):
        y = x0.copy()
        if step is not None:
            y[k] = y[k] + step
        else:
            y[k] = 1.05 * y[k] if y[k] != 0 else 0.00025
        sim.append(y)
    return np.stack(sim)


def reference_run(f, x0, p, rules, adaptive, initial_step, steps):
    """(steps+1, ...) arrays of simplex, fvals, nfev; (steps, P) branch codes."""
    sim = reference_simplex(x0, initial_step)
    fsim = np.array([f(x) for x in sim])
    order = np.argsort(fsim, kind="stable")
    out = [(sim[order], fsim[order], len(sim))]
    codes = []
    for _ in range(steps):
        sim, fsim, code, calls = reference_step(f, *out[-1][:2], p, rules, adaptive)
        out.append((sim, fsim, out[-1][2] + calls))
        codes.append(code)
    simplex, fvals, nfev = (np.stack(x) for x in zip(*out, strict=True))
    return simplex, fvals, nfev, np.array(codes)


@functools.cache
def reference_traces(family, n, p, rules, adaptive, initial_step):
    problem, objective_of, x0 = make_problem(family, n)
    teacher = ParallelNelderMead(p, rules, adaptive, initial_step)
    traces = []
    for b in range(BATCH):
        f = point_objective(objective_of(problem), b, BATCH)
        trace = reference_run(f, x0[b].numpy(), p, rules, adaptive, initial_step, STEPS)
        assert_no_ties(trace[1])
        traces.append(trace)
    return problem, objective_of, x0, teacher, traces


REFERENCE = [
    ("rosenbrock", 5, 2, "scipy", False, None),
    ("sawtooth", 5, 3, "scipy", True, None),
    ("quadratic", 10, 4, "scipy", True, None),
    ("rosenbrock", 4, 4, "scipy", True, None),  # P = n: the centroid is the best vertex
    ("rosenbrock", 5, 1, "paper", False, None),  # the paper's Section 2 NM
    ("rosenbrock", 5, 2, "paper", False, 1.0),
    ("sawtooth", 5, 3, "paper", False, None),
    ("quadratic", 10, 4, "paper", False, 1.0),
    ("rosenbrock", 3, 3, "paper", False, None),
]
REFERENCE_CASES = pytest.mark.parametrize("family, n, p, rules, adaptive, initial_step", REFERENCE)


@REFERENCE_CASES
def test_free_running_equals_reference(family, n, p, rules, adaptive, initial_step):
    problem, objective_of, x0, teacher, traces = reference_traces(
        family, n, p, rules, adaptive, initial_step
    )
    traj = blockwise.rollout(teacher, objective_of(problem), x0, STEPS)
    for b, (simplex, fvals, nfev, codes) in enumerate(traces):
        assert_states_equal({k: v[:, b] for k, v in traj.states.items()}, simplex, fvals, nfev)
        assert np.array_equal(traj.extras["branch"][:, b].numpy(), codes)
        assert np.array_equal(traj.extras["evals"][:, b].numpy(), np.diff(nfev))


@REFERENCE_CASES
def test_teacher_forced_equals_reference(family, n, p, rules, adaptive, initial_step):
    problem, objective_of, _, teacher, traces = reference_traces(
        family, n, p, rules, adaptive, initial_step
    )
    for b, (simplex, fvals, nfev, codes) in enumerate(traces):
        state = {
            "simplex": torch.from_numpy(simplex[:-1]),
            "fvals": torch.from_numpy(fvals[:-1]),
            "nfev": torch.from_numpy(nfev[:-1]),
            "done": torch.zeros(STEPS, dtype=torch.bool),
        }
        new, extras = teacher.step(objective_of(problem[torch.full((STEPS,), b)]), state)
        assert_states_equal(new, simplex[1:], fvals[1:], nfev[1:])
        assert np.array_equal(extras["branch"].numpy(), codes)


def test_reference_cases_meet_every_branch():
    """Shrinks (all P vertices failing) included, under both rule sets."""
    for rules in ("scipy", "paper"):
        codes = [
            trace[3]
            for case in REFERENCE
            if case[3] == rules
            for trace in reference_traces(*case)[-1]
        ]
        counts = np.bincount(np.concatenate([c.ravel() for c in codes]), minlength=6)
        shrinks = sum(int((c == 5).all(axis=1).sum()) for c in codes)
        assert (counts >= 5).all() and shrinks >= 3, (rules, counts, shrinks)


@pytest.mark.parametrize(
    "family, n, adaptive",
    [("rosenbrock", 5, False), ("sawtooth", 5, True), ("quadratic", 10, True)],
)
def test_p1_scipy_rules_equal_scipy(family, n, adaptive):
    problem, objective_of, x0 = make_problem(family, n)
    teacher = teachers.make("parallel_nelder_mead", adaptive=adaptive)
    traj = blockwise.rollout(teacher, objective_of(problem), x0, 100)
    for b in range(BATCH):
        f = point_objective(objective_of(problem), b, BATCH)
        trace = run_scipy(f, x0[b].numpy(), 100, adaptive, tol=0.0)
        assert_no_ties(trace.fvals)
        assert_states_equal(
            {k: v[:, b] for k, v in traj.states.items()}, trace.simplex, trace.fvals, trace.nfev
        )
        assert np.array_equal(traj.extras["branch"][:, b, 0].numpy(), trace.branch)


def test_initial_simplex():
    """The paper's x0 + s e_k, or scipy's by default; sorted by f (here untied), nfev = n+1."""
    x0 = torch.tensor([[0.0, 2.0, -4.0]], dtype=torch.float64)
    weights = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)

    def f(x):
        return (x * weights).sum(-1)

    paper = ParallelNelderMead(parallelism=2, initial_step=1.0).init(f, x0)
    assert paper["simplex"][0].tolist() == [
        [0.0, 2.0, -4.0],
        [1.0, 2.0, -4.0],
        [0.0, 3.0, -4.0],
        [0.0, 2.0, -3.0],
    ]
    scipy_like = ParallelNelderMead(parallelism=2).init(f, x0)
    assert scipy_like["simplex"][0].tolist() == [
        [0.0, 2.0, -4.2],
        [0.0, 2.0, -4.0],
        [0.00025, 2.0, -4.0],
        [0.0, 2.1, -4.0],
    ]
    assert scipy_like["nfev"].tolist() == [4]
    assert torch.equal(scipy_like["fvals"], f(scipy_like["simplex"]))


@pytest.mark.parametrize("rules", ["scipy", "paper"])
def test_batch_equals_rows_one_by_one(rules):
    """float64 exactly, float32 to rounding."""
    for dtype in (torch.float64, torch.float32):
        problem, objective_of, x0 = make_problem("sawtooth", 4, batch=3, dtype=dtype)
        teacher = ParallelNelderMead(parallelism=2, rules=rules)
        batched = blockwise.rollout(teacher, objective_of(problem), x0, 30)
        for b in range(3):
            row = blockwise.rollout(teacher, objective_of(problem[b]), x0[b : b + 1], 30)
            for name in batched.states:
                got, want = row.states[name][:, 0], batched.states[name][:, b]
                if dtype == torch.float64:
                    assert torch.equal(got, want), name
                else:
                    torch.testing.assert_close(got, want)


def test_termination_freezes_like_nelder_mead():
    """P = 1, scipy rules, with tolerances: the same done step and final state as nelder_mead."""
    problem, objective_of, x0 = make_problem("quadratic", 3)
    settings = {"xatol": 1e-4, "fatol": 1e-4, "adaptive": True}
    a = blockwise.rollout(ParallelNelderMead(**settings), problem, x0, 400)
    b = blockwise.rollout(teachers.make("nelder_mead", **settings), problem, x0, 400)
    assert a.states["done"][-1].all()
    for name in a.states:
        assert torch.equal(a.states[name], b.states[name]), name
    assert torch.equal(a.extras["branch"][..., 0], b.extras["branch"])


def test_bad_input_is_named():
    problem, _, x0 = make_problem("quadratic", 3)
    with pytest.raises(ValueError, match="x0 must have shape"):
        ParallelNelderMead().init(problem, x0[None])
    bad = x0.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x0 has non-finite"):
        ParallelNelderMead().init(problem, bad)
    with pytest.raises(ValueError, match=r"parallelism must be <= n = 3"):
        ParallelNelderMead(parallelism=4).init(problem, x0)
    with pytest.raises(ValueError, match="parallelism must be an int >= 1"):
        teachers.make("parallel_nelder_mead", parallelism=0)
    with pytest.raises(ValueError, match="unknown setting.*'workers'"):
        teachers.make("parallel_nelder_mead", workers=2)
    with pytest.raises(ValueError, match="rules must be one of"):
        ParallelNelderMead(rules="lagarias")
    with pytest.raises(ValueError, match="adaptive=True needs rules='scipy'"):
        ParallelNelderMead(rules="paper", adaptive=True)
    with pytest.raises(ValueError, match="initial_step"):
        ParallelNelderMead(initial_step=0.0)
    with pytest.raises(ValueError, match="both xatol and fatol"):
        ParallelNelderMead(fatol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rules", ["scipy", "paper"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_equals_cpu(rules, dtype):
    x0 = torch.linspace(-1.5, 2.0, 4 * 6, dtype=dtype).reshape(4, 6)
    teacher = ParallelNelderMead(parallelism=3, rules=rules)
    cpu = blockwise.rollout(teacher, separable, x0, 150)
    gpu = blockwise.rollout(teacher, separable, x0.cuda(), 150)
    for name in cpu.states:
        assert torch.equal(cpu.states[name], gpu.states[name].cpu()), name
    assert torch.equal(cpu.extras["branch"], gpu.extras["branch"].cpu())
    assert (cpu.extras["branch"] == 5).any()  # shrinks and contractions included
