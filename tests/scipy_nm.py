"""Shared by the Nelder–Mead tests: scipy traced as an independent reference, and test problems.

scipy runs unmodified. Its public callback receives only the best vertex, so the tracer reads
the whole sorted simplex from the locals of the `_minimize_neldermead` frame that called it
(teachers.md §1.4), and records every evaluation in call order. State 0 never reaches a callback;
it is rebuilt from the first n+1 evaluations, sorted twice with np.argsort as scipy sorts it.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import scipy
import scipy.optimize
import torch

from blockwise import problems
from blockwise.problems import Objective

# The frame and local names read below are scipy internals, checked against scipy 1.17.1; a
# refactor that renames them fails loudly in _frame_locals rather than comparing garbage.
BATCH = 3


@dataclasses.dataclass
class Trace:
    """scipy's run on one problem.

    Attributes:
        simplex: (T+1, n+1, n) sorted simplex after 0..T iterations.
        fvals: (T+1, n+1).
        nfev: (T+1,) scipy's evaluation count.
        branch: (T,) branch codes (nelder_mead's 0..5) inferred from the logged evaluations.
        calls: every (x, f(x)) scipy evaluated, in call order.
        result: scipy's OptimizeResult.
    """

    simplex: np.ndarray
    fvals: np.ndarray
    nfev: np.ndarray
    branch: np.ndarray
    calls: list[tuple[np.ndarray, float]]
    result: scipy.optimize.OptimizeResult


def point_objective(objective: Objective, b: int, batch: int):
    """Instance b of a batched objective as scipy's f(x: (n,)) -> float, one point at a time.

    The point sits in row b of a (batch, 1, n) input (other rows hold zeros), so any objective,
    a Problem or a plain callable, is evaluated by the same torch code scipy's caller uses.
    """

    def f(x: np.ndarray) -> float:
        points = torch.zeros(batch, 1, x.shape[0], dtype=torch.float64)
        points[b, 0] = torch.from_numpy(np.array(x, dtype=np.float64))
        return float(objective(points)[b, 0])

    return f


def _frame_locals() -> dict:
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_name != "_minimize_neldermead":
        frame = frame.f_back
    assert frame is not None, f"scipy {scipy.__version__}: no _minimize_neldermead frame"
    loc = frame.f_locals
    missing = {"sim", "fsim", "fcalls"} - set(loc.keys())
    assert not missing, f"scipy {scipy.__version__}: _minimize_neldermead lacks {missing}"
    return loc


def run_scipy(f, x0: np.ndarray, steps: int | None, adaptive: bool, tol: float) -> Trace:
    """scipy.optimize.minimize(f, x0, "Nelder-Mead"), traced.

    steps=None runs to scipy's convergence test with xatol = fatol = tol; a number of steps sets
    maxiter = steps + 1 (scipy's iteration counter starts at 1) so exactly that many complete.
    """
    calls: list[tuple[np.ndarray, float]] = []
    states: list[tuple[np.ndarray, np.ndarray, int]] = []

    def logged(x):
        value = f(x)
        calls.append((np.array(x, copy=True), value))
        return value

    def callback(intermediate_result):  # scipy passes its new-style payload only to this name
        loc = _frame_locals()
        states.append((loc["sim"].copy(), loc["fsim"].copy(), int(loc["fcalls"][0])))

    options = {
        "maxfev": 10**9,
        "xatol": tol,
        "fatol": tol,
        "adaptive": adaptive,
        "maxiter": 10**9 if steps is None else steps + 1,
    }
    result = scipy.optimize.minimize(
        logged, x0, method="Nelder-Mead", callback=callback, options=options
    )
    n = x0.shape[0]
    sim0 = np.stack([x for x, _ in calls[: n + 1]])
    fsim0 = np.array([v for _, v in calls[: n + 1]])
    for _ in range(2):
        order = np.argsort(fsim0)
        sim0, fsim0 = sim0[order], fsim0[order]
    states.insert(0, (sim0, fsim0, n + 1))
    simplex, fvals, nfev = (np.stack(s) for s in zip(*states, strict=True))
    branch = [
        _infer_branch(calls[nfev[t] : nfev[t + 1]], fvals[t], simplex[t + 1])
        for t in range(len(states) - 1)
    ]
    return Trace(simplex, fvals, nfev, np.array(branch, dtype=np.int64), calls, result)


def _infer_branch(calls, fsim: np.ndarray, new_sim: np.ndarray) -> int:
    """The branch scipy took, from the points it evaluated in one iteration."""
    if len(calls) == 1:
        return 2  # only xr: reflection accepted
    if len(calls) > 2:
        return 5  # xr, a contraction point, then the n shrink points
    (_, fr), (second, _) = calls
    if fr < fsim[0]:  # the second point was the expansion point
        return 0 if (new_sim == second).all(axis=1).any() else 1
    return 3 if fr < fsim[-1] else 4


def assert_no_ties(fvals: np.ndarray) -> None:
    """Exact ties make scipy's unstable np.argsort platform dependent (teachers.md §1.5)."""
    for t, row in enumerate(fvals):
        assert len(np.unique(row)) == len(row), f"tied f values at iteration {t}: {row}"


def assert_states_equal(states: dict, simplex, fvals, nfev, rtol: float = 1e-12) -> None:
    """Torch states (T, ...) of one problem against a reference's (T, ...), step by step:
    simplex and nfev exactly, f to rtol (the reference may evaluate f one point at a time)."""
    got_x, got_f, got_n = (states[k].cpu().numpy() for k in ("simplex", "fvals", "nfev"))
    assert got_x.shape == simplex.shape, (got_x.shape, simplex.shape)
    for t in range(len(simplex)):
        assert np.array_equal(got_x[t], simplex[t]), f"simplex differs at step {t}"
        assert got_n[t] == nfev[t], f"nfev differs at step {t}: {got_n[t]} != {nfev[t]}"
        np.testing.assert_allclose(got_f[t], fvals[t], rtol=rtol, atol=0, err_msg=f"step {t}")


# Test problems: untied instances (exact ties in f would make scipy's order platform dependent).


def ramp(x):
    """A sawtooth of height 0.3 along the direction (1.5, 2.5, ...): (..., n) -> (...).

    Smooth functions almost never make scipy shrink; its cliffs make contractions fail. Exact
    elementwise ops only, so a point's value depends neither on the batch nor on the device.
    """
    s = torch.zeros_like(x[..., 0])
    for i in range(x.shape[-1]):
        s = s + (i + 1.5) * x[..., i]
    s = 10.0 * s
    return 0.3 * (s - torch.floor(s))


def sawtooth(problem: problems.Problem):
    """problem's f plus the ramp."""
    return lambda x: problem(x) + ramp(x)


def make_problem(family: str, n: int, batch: int = BATCH, dtype=torch.float64):
    """(problem, objective of a problem, x0) for untied instances of three families.

    quadratic: rotated, condition 1e3, random shift. rosenbrock: x0 = 1 + U(-3, 3)^n.
    sawtooth: a rotated quadratic (condition 10) plus a sawtooth, x0 = x* + U(-3, 3)^n.
    """
    if family == "quadratic":
        problem = problems.make("quadratic", batch, n, seed=100 + n, condition=1e3, shift=1.0)
        return problem, lambda p: p, problem.sample_x0(seed=200 + n, dtype=dtype)
    if family == "rosenbrock":
        problem = problems.make("rosenbrock", batch, n, seed=300 + n)
        return problem, lambda p: p, problem.sample_x0(seed=400 + n, radius=3.0, dtype=dtype)
    problem = problems.make("quadratic", batch, n, seed=9, condition=10.0)
    return problem, sawtooth, problem.sample_x0(seed=10, radius=3.0, dtype=dtype)


def separable(x):
    """A separable quadratic plus the ramp, from elementwise ops only: it rounds the same on
    every device, so a CUDA trajectory can be compared with a CPU one bit for bit."""
    total = torch.zeros_like(x[..., 0])
    for i in range(x.shape[-1]):
        total = total + (i + 1.0) * (x[..., i] - 0.3 * i) ** 2
    return total + ramp(x)
