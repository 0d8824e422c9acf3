"""Nelder–Mead as scipy runs it, batched: the teacher "nelder_mead".

This follows `scipy.optimize._optimize._minimize_neldermead` (scipy 1.17.1) rule for rule, so
that a float64 trajectory equals scipy's bit for bit when f has no exact ties:

* the initial simplex: x0 and, for each k, x0 with component k scaled by 1.05 (set to 0.00025
  where it is 0); all n+1 vertices are evaluated (nfev = n+1) and sorted;
* per step: centroid of the n best vertices, reflection, then expansion (greedy: xe is kept only
  if f(xe) < f(xr)), acceptance of xr, outside contraction (kept if f(xc) <= f(xr)) or inside
  contraction (kept if f(xcc) < f(worst)), else a shrink of every vertex towards the best one;
* coefficients rho = 1, chi = 2, psi = 1/2, sigma = 1/2, or with `adaptive` the dimension-dependent
  ones of Gao & Han, "Implementing the Nelder-Mead simplex algorithm with adaptive parameters",
  Comput. Optim. Appl. 51:259-277 (2012): chi = 1 + 2/n, psi = 3/4 - 1/(2n), sigma = 1 - 1/n;
* scipy's convergence test (max |x_i - x_0| <= xatol and max |f_i - f_0| <= fatol), run before
  the step as scipy runs it at the top of its loop.

Bitwise agreement needs the same floating-point operations as numpy: the centroid is a sequential
row sum (numpy's `add.reduce` order, which `torch.sum` does not keep), trial points use scipy's
elementwise expressions (no fused multiply-adds, no `alpha=`), and the sort is stable (scipy's
`np.argsort` is not, so the two part ways only where f values tie exactly).

The helpers below are written for the P worst vertices moved at once, so that
`parallel_nelder_mead` (Lee & Wiswall 2007) shares them; scipy's NM is the case P = 1, which
`scipy_step` computes faster (batch last, with the new vertex inserted rather than the simplex
sorted), giving the same floats as `scipy_moves` followed by `sort_simplex`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from blockwise.problems import Objective, Problem, evaluate
from blockwise.teachers.base import State, Teacher, check_state, check_x0

BRANCHES = (
    "expand",
    "reflect_after_expand_test",
    "reflect",
    "outside_contraction",
    "inside_contraction",
    "shrink",
)
"""Names of the branch codes 0..5 in the `branch` extra; -1 marks a problem already done."""
SHRINK = 5
FROZEN = -1

NONZDELT = 0.05  # scipy's relative step for a nonzero component of x0
ZDELT = 0.00025  # scipy's absolute step for a zero component


class Coefficients(NamedTuple):
    """Reflection rho, expansion chi, contraction psi, shrink sigma (scipy's names)."""

    rho: float
    chi: float
    psi: float
    sigma: float


def coefficients(n: int, adaptive: bool) -> Coefficients:
    """scipy's coefficients for dimension n; the same Python arithmetic, hence the same floats."""
    if not adaptive:
        return Coefficients(1, 2, 0.5, 0.5)
    dim = float(n)
    return Coefficients(1, 1 + 2 / dim, 0.75 - 1 / (2 * dim), 1 - 1 / dim)


def initial_simplex(x0: Tensor, step: float | None = None) -> Tensor:
    """The unsorted simplex (B, n+1, n) around x0 (B, n): vertex 0 is x0, vertex k+1 moves x0[k].

    step=None is scipy's construction (x0[k] * 1.05, or 0.00025 where x0[k] == 0); a float s
    gives x0 + s e_k, the construction in Lee & Wiswall (2007), whose default is s = 1.
    """
    n = x0.shape[-1]
    if step is None:
        moved = torch.where(x0 != 0, (1 + NONZDELT) * x0, torch.full_like(x0, ZDELT))
    else:
        moved = x0 + step
    eye = torch.eye(n, dtype=torch.bool, device=x0.device)
    vertices = torch.where(eye, moved[:, None, :], x0[:, None, :])  # (B, n, n): row k moves x0[k]
    return torch.cat([x0[:, None, :], vertices], dim=1)


def centroid(vertices: Tensor) -> Tensor:
    """Mean of vertices (B, m, n) -> (B, n), summed row after row as numpy's add.reduce does."""
    return mean_of_rows(vertices.transpose(0, 1))


def mean_of_rows(rows: Tensor) -> Tensor:
    """Mean over dim 0 of rows (m, ...), summed row after row as numpy's add.reduce does."""
    rows = rows.unbind(0)
    total = rows[0] + rows[1] if len(rows) > 1 else rows[0].clone()
    for row in rows[2:]:
        total += row
    # A tensor divisor: CUDA turns division by a Python scalar into multiplication by its
    # reciprocal, which can differ from numpy in the last bit.
    return total.div_(total.new_tensor(float(len(rows))))


def evaluate_points(objective: Objective, points: Tensor) -> Tensor:
    """f at points (B, M, n) -> (B, M), in the points' dtype."""
    return evaluate(objective, points).to(points.dtype)


def sort_simplex(simplex: Tensor, fvals: Tensor) -> tuple[Tensor, Tensor]:
    """Vertices (B, n+1, n) and values (B, n+1) in ascending f; ties keep their order, NaN last."""
    # Without ties every sort gives the same order, and torch's unstable sort is several times
    # faster; fall back to the stable one only when some row has equal values or two NaNs.
    sorted_f, order = torch.sort(fvals, dim=1)
    ties = (sorted_f[:, 1:] == sorted_f[:, :-1]).any() | (fvals.isnan().sum(1) > 1).any()
    if ties:
        sorted_f, order = torch.sort(fvals, dim=1, stable=True)
    simplex = simplex.gather(1, order[:, :, None].expand_as(simplex))
    return simplex, sorted_f


def init_state(objective: Objective, simplex: Tensor) -> State:
    """The sorted state of a fresh simplex (B, n+1, n); nfev counts its n+1 evaluations."""
    fvals = evaluate_points(objective, simplex)
    simplex, fvals = sort_simplex(simplex, fvals)
    batch, vertices = fvals.shape
    return {
        "simplex": simplex,
        "fvals": fvals,
        "nfev": torch.full((batch,), vertices, dtype=torch.int64, device=simplex.device),
        "done": torch.zeros(batch, dtype=torch.bool, device=simplex.device),
    }


def check_tolerances(where: str, xatol: float | None, fatol: float | None) -> None:
    """Both tolerances None (never stop) or both numbers >= 0, as scipy tests both together."""
    if (xatol is None) != (fatol is None):
        raise ValueError(
            f"{where}: set both xatol and fatol or neither (got xatol={xatol!r}, "
            f"fatol={fatol!r}); scipy stops only when both hold, so pass float('inf') to "
            "test one alone"
        )
    for name, value in (("xatol", xatol), ("fatol", fatol)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"{where}: {name} must be None or a number >= 0, got {value!r}")


def converged(simplex: Tensor, fvals: Tensor, xatol: float | None, fatol: float | None) -> Tensor:
    """(B,) scipy's test max|x_i - x_0| <= xatol and max|f_0 - f_i| <= fatol; never without both."""
    if xatol is None or fatol is None:
        return torch.zeros(fvals.shape[0], dtype=torch.bool, device=fvals.device)
    spread_x = (simplex[:, 1:] - simplex[:, :1]).abs().amax(dim=(1, 2))
    spread_f = (fvals[:, :1] - fvals[:, 1:]).abs().amax(dim=1)
    return (spread_x <= xatol) & (spread_f <= fatol)


TRIALS = ("expand", "reflect", "contract_out", "contract_in")
"""The trial points of a moved vertex: scipy's xe, xr, xc, xcc, in `trial_coefficients`' order."""


@functools.lru_cache(maxsize=16)
def trial_coefficients(coef: Coefficients, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2, 4): the trial points of TRIALS for a vertex w through the centroid xbar are
    c[0, j] xbar - c[1, j] w. These are scipy's expressions, so that every float64 operation
    rounds as numpy's does: xe = (1 + rho chi) xbar - rho chi w, xr = (1 + rho) xbar - rho w,
    xc = (1 + psi rho) xbar - psi rho w, and xcc = (1 - psi) xbar + psi w with c[1, 3] = -psi
    (the same float: x - (-y) is x + y exactly). Read only."""
    rho, chi, psi, _ = coef
    rows = [[1 + rho * chi, 1 + rho, 1 + psi * rho, 1 - psi], [rho * chi, rho, psi * rho, -psi]]
    return torch.tensor(rows, dtype=dtype, device=device)


def trial_point(c: Tensor, xbar: Tensor, worst: Tensor) -> Tensor:
    """c[0] xbar - c[1] worst: the one expression of every trial point, for coefficients c
    (2, ...) from `trial_coefficients`, broadcast against xbar and worst."""
    return c[0] * xbar - c[1] * worst


def shrink_points(best: Tensor, vertices: Tensor, sigma: float) -> Tensor:
    """scipy's shrink of `vertices` towards `best` (broadcast against them)."""
    return best + sigma * (vertices - best)


def scipy_points(simplex: Tensor, parallelism: int, coef: Coefficients) -> dict[str, Tensor]:
    """Every point scipy's rules can move a vertex of the sorted simplex (B, n+1, n) to.

    Returns the TRIALS kinds (B, P, n), one point per moved vertex (the P worst, worst last),
    each through the centroid of the n+1-P best; and "shrink" (B, n, n), vertices 1..n shrunk
    towards the best.
    """
    n = simplex.shape[-1]
    keep = n + 1 - parallelism
    xbar = centroid(simplex[:, :keep])[:, None, :]  # (B, 1, n)
    c = trial_coefficients(coef, simplex.dtype, simplex.device)[:, :, None, None, None]
    trials = trial_point(c, xbar, simplex[:, keep:])  # (4, B, P, n)
    shrunk = shrink_points(simplex[:, :1], simplex[:, 1:], coef.sigma)
    return dict(zip(TRIALS, trials.unbind(0), strict=True)) | {"shrink": shrunk}


def select(branch: Tensor, e: Tensor, r: Tensor, c: Tensor, cc: Tensor, old: Tensor) -> Tensor:
    """Per branch code: xe (0), xr (1, 2), xc (3), xcc (4) or the old vertex (5); broadcasts."""
    contract = torch.where(branch == 3, c, torch.where(branch == 4, cc, old))
    return torch.where(branch == 0, e, torch.where(branch <= 2, r, contract))


def scipy_moves(
    objective: Objective, simplex: Tensor, fvals: Tensor, parallelism: int, coef: Coefficients
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scipy's step applied to each of the P worst vertices of a sorted simplex, all at once.

    The P worst vertices are moved independently, each through the centroid of the n+1-P best,
    each compared with its own predecessor where scipy compares with the second-worst vertex;
    if all P contractions fail, every vertex shrinks towards the best one. P = 1 is scipy's step.
    The 4 candidates per moved vertex are evaluated in one objective call; the n shrink points
    only when some problem shrinks (rarely), in a second call.

    Args:
        simplex: (B, n+1, n), sorted by fvals (B, n+1).
    Returns:
        simplex (B, n+1, n) and fvals (B, n+1), unsorted; branch (B, P) codes per moved vertex,
        worst last (5: its contraction failed; the simplex shrank iff all P are 5); evals (B,)
        the evaluations a sequential implementation makes (1 or 2 per vertex, n for a shrink).
    """
    n = simplex.shape[-1]
    keep = n + 1 - parallelism
    worst = simplex[:, keep:]  # (B, P, n)
    points = scipy_points(simplex, parallelism, coef)
    candidates = torch.cat([points[kind] for kind in TRIALS], dim=1)  # (B, 4P, n)
    f = evaluate_points(objective, candidates)
    fe, fr, fc, fcc = f.split(parallelism, dim=1)  # each (B, P)

    f_best = fvals[:, :1]
    f_prev = fvals[:, keep - 1 : n]  # each moved vertex's predecessor; scipy's fsim[-2] at P = 1
    f_worst = fvals[:, keep:]
    expand = fr < f_best
    reflect = ~expand & (fr < f_prev)
    outside = ~expand & ~reflect & (fr < f_worst)
    inside = ~expand & ~reflect & ~outside
    # Each test is written as scipy's `if`, so NaN takes scipy's else-branches.
    take_e, take_c, take_cc = fe < fr, fc <= fr, fcc < f_worst
    branch = torch.where(expand, torch.where(take_e, 0, 1), torch.where(reflect, 2, SHRINK))
    branch = torch.where(outside & take_c, 3, torch.where(inside & take_cc, 4, branch))

    # The kept trial point per vertex: codes 0 -> xe, 1 and 2 -> xr, 3 -> xc, 4 -> xcc; code 5
    # (failed contraction) keeps the old vertex, so its slot 0 is a placeholder replaced below.
    # Index into candidates (B, 4P, n): block slot, row p within it.
    slot = torch.tensor((0, 1, 1, 2, 3, 0), device=branch.device)[branch] * parallelism
    slot = slot + torch.arange(parallelism, device=branch.device)  # (B, P)
    picked = candidates.gather(1, slot[..., None].expand(-1, -1, n))  # (B, P, n)
    picked_f = f.gather(1, slot)
    failed = branch == SHRINK
    new = torch.cat([simplex[:, :keep], torch.where(failed[..., None], worst, picked)], 1)
    new_f = torch.cat([fvals[:, :keep], torch.where(failed, f_worst, picked_f)], 1)
    shrink = failed.all(dim=1)
    if shrink.any():
        best, shrunk = simplex[:, :1], points["shrink"]  # from the original vertices
        f_shrunk = evaluate_points(objective, shrunk)
        new = torch.where(shrink[:, None, None], torch.cat([best, shrunk], dim=1), new)
        new_f = torch.where(shrink[:, None], torch.cat([f_best, f_shrunk], dim=1), new_f)
    evals = (1 + (branch != 2).long()).sum(dim=1) + n * shrink.long()
    return new, new_f, branch, evals


def evaluate_batch_last(objective: Objective, points: Tensor) -> Tensor:
    """f at points (M, n, B), batch last, -> (M, B).

    A Problem gets the points as they are (`Problem.evaluate_batch_last`); a plain callable
    gets them as a contiguous (B, M, n) tensor, as scipy's caller builds them, so that one
    that sums over n rounds the same way.
    """
    if isinstance(objective, Problem):
        return objective.evaluate_batch_last(points).to(points.dtype)
    return evaluate_points(objective, points.permute(2, 0, 1).contiguous()).t()


def scipy_step(
    objective: Objective, simplex: Tensor, fvals: Tensor, coef: Coefficients
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scipy's step: what `scipy_moves` at P = 1 followed by `sort_simplex` give, faster.

    The arithmetic runs batch last, on (n+1, n, B) and (4, n, B) tensors, where every
    operation is a long vector operation over the B problems; in the (B, n+1, n) layout each
    would loop over rows of n values, which costs torch several times more per element. The
    4 candidates go to the objective in one call, as in `scipy_moves`; the n shrink points only
    when some problem shrinks. scipy's six comparisons make a 6-bit code per problem, which
    indexes tables of its decisions (`_decision_tables`). Only the worst vertex changes unless
    the simplex shrinks, so the sorted simplex is the old one with the new vertex inserted
    after every kept vertex whose f is <= its own (what a stable sort gives): rows are gathered
    into place rather than sorted. A shrink, or kept f values out of order, go through
    `sort_simplex` instead.

    Args:
        simplex: (B, n+1, n), sorted by fvals (B, n+1).
    Returns:
        simplex (B, n+1, n) and fvals (B, n+1), sorted; branch (B,); evals (B,).
    """
    batch, n = simplex.shape[0], simplex.shape[-1]
    device = simplex.device
    first_rows, order, f_columns = _index_tables(batch, n, device)
    sim = simplex.permute(1, 2, 0).contiguous()  # (n+1, n, B)
    fsim = fvals.reshape(-1).index_select(0, f_columns).view(n + 1, batch)  # fvals.t(), faster
    xbar, worst = mean_of_rows(sim[:n]), sim[n]  # (n, B)
    c = trial_coefficients(coef, simplex.dtype, device)  # (2, 4)
    candidates = trial_point(c[:, :, None, None], xbar, worst)  # (4, n, B)
    f = evaluate_batch_last(objective, candidates)  # (4, B)
    fe, fr, fc, fcc = f.unbind(0)
    f_best, f_worst = fsim[0], fsim[n]
    # scipy's six comparisons, each as its `if` writes it (so NaN fails them all), as the
    # bits of a code that indexes tables of scipy's decisions.
    bits = torch.empty((6, batch), dtype=torch.bool, device=device)
    torch.lt(fr, f_best, out=bits[0])
    torch.lt(fr, fsim[n - 1 :], out=bits[1:3])  # f_prev, f_worst
    torch.lt(fe, fr, out=bits[3])
    torch.lt(fcc, f_worst, out=bits[4])
    torch.le(fc, fr, out=bits[5])
    tables = _decision_tables(device)
    code = (bits.view(torch.uint8) * tables["weights"]).sum(0)  # (B,) int64
    branch = tables["branch"].index_select(0, code)
    evals = tables["evals"].index_select(0, code)
    kept = tables["candidate"].index_select(0, code)  # 0..3: xe, xr, xc, xcc
    # The new vertex, recomputed from its candidate's coefficients: the same floats.
    v = trial_point(c.index_select(1, kept), xbar, worst)  # (n, B)
    fv = f.gather(0, kept[None])[0]

    # The kept f values ascend with no NaN (one reduction), else the exact test below.
    clean = n > 1 and batch > 0 and float((fsim[1:n] - fsim[: n - 1]).amin()) >= 0
    shrinks = batch > 0 and int(branch.max()) == SHRINK
    if shrinks or not (clean or _ascending(fsim[:n])):
        new, new_f = simplex.clone(), fvals.clone()
        new[:, n], new_f[:, n] = v.t(), fv
        shrink = branch == SHRINK
        if shrink.any():
            shrunk = shrink_points(sim[0], sim[1:], coef.sigma)  # (n, n, B): original vertices
            f_shrunk = evaluate_batch_last(objective, shrunk).t()  # (B, n)
            new[:, 1:] = torch.where(shrink[:, None, None], shrunk.permute(2, 0, 1), new[:, 1:])
            new_f[:, 1:] = torch.where(shrink[:, None], f_shrunk, new_f[:, 1:])
            evals = evals + n * shrink
        simplex, fvals = sort_simplex(new, new_f)
        return simplex, fvals, branch, evals

    # The new vertex goes after every kept vertex with f <= fv, i.e. before the `later` ones
    # (none if fv is NaN). Each problem's rows, its n+1 vertices and then the new one, are
    # gathered into slot order from the flattened (B (n+2), n) simplex.
    if clean:  # no NaN among the kept values
        later = (fsim[:n] > fv).sum(0)
    else:
        later = n - ((fsim[:n] <= fv) | fv.isnan()).sum(0)
    rows = first_rows + order.index_select(0, later).view(-1)  # (B (n+1),)
    new = torch.cat([simplex, v.t()[:, None]], 1).view(-1, n).index_select(0, rows)
    new_f = torch.cat([fvals, fv[:, None]], 1).view(-1).index_select(0, rows)
    return new.view(batch, n + 1, n), new_f.view(batch, n + 1), branch, evals


def _scipy_branch(
    lt_best: bool, lt_prev: bool, lt_worst: bool, e_lt_r: bool, cc_lt_worst: bool, c_le_r: bool
) -> int:
    """scipy's decision tree on its comparisons fr < f_best, fr < f_prev, fr < f_worst,
    fe < fr, fcc < f_worst and fc <= fr: the branch code 0..5."""
    if lt_best:
        return 0 if e_lt_r else 1
    if lt_prev:
        return 2
    if lt_worst:
        return 3 if c_le_r else SHRINK
    return 4 if cc_lt_worst else SHRINK


@functools.lru_cache(maxsize=4)
def _decision_tables(device: torch.device) -> dict[str, Tensor]:
    """Per 6-bit code of scipy's comparisons (bit k = comparison k of `_scipy_branch`): the
    branch, the evaluations it counts (n more for a shrink are added by the caller) and the
    candidate kept (0..3: xe, xr, xc, xcc; xr stands in for a shrink). Read only."""
    branch = [_scipy_branch(*(bool(code >> k & 1) for k in range(6))) for code in range(64)]
    return {
        "weights": torch.tensor([1, 2, 4, 8, 16, 32], dtype=torch.uint8, device=device)[:, None],
        "branch": torch.tensor(branch, device=device),
        "evals": torch.tensor([1 if b == 2 else 2 for b in branch], device=device),
        "candidate": torch.tensor([(0, 1, 1, 2, 3, 1)[b] for b in branch], device=device),
    }


def _ascending(f: Tensor) -> bool:
    """Whether every column of f (m, B) ascends, NaN last (the order `sort_simplex` makes)."""
    return bool(((f[:-1] <= f[1:]) | f[1:].isnan()).all())


@functools.lru_cache(maxsize=16)
def _index_tables(batch: int, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Index tensors (read only) for B problems in n dimensions.

    first_rows (B (n+1),): b (n+2), n+1 times for each problem b; order (n+1, n+1):
    order[later] lists, in slot order, the rows of a problem's n+1 vertices followed by a new
    one (row n+1) that goes before the `later` last kept vertices (at slot n - later); and
    f_columns (B (n+1),), which reads fvals (B, n+1), flattened, column by column.
    """
    slots = torch.arange(n + 1, device=device)
    at = n - slots[:, None]
    order = torch.where(slots < at, slots, torch.where(slots == at, n + 1, slots - 1))
    problems = torch.arange(batch, device=device)
    first_rows = (problems * (n + 2)).repeat_interleave(n + 1)
    f_columns = (slots[:, None] + problems * (n + 1)).view(-1)
    return first_rows, order, f_columns


def finish(
    state: State, done: Tensor, simplex: Tensor, fvals: Tensor, branch: Tensor, evals: Tensor
) -> tuple[State, dict[str, Tensor]]:
    """The next state (sorted; done problems frozen) and the extras, from a step's moves."""
    simplex, fvals = sort_simplex(simplex, fvals)
    return freeze(state, done, simplex, fvals, branch, evals)


def freeze(
    state: State, done: Tensor, simplex: Tensor, fvals: Tensor, branch: Tensor, evals: Tensor
) -> tuple[State, dict[str, Tensor]]:
    """The next state and the extras from a step's sorted results, done problems frozen."""
    if done.any():
        evals = torch.where(done, 0, evals)
        simplex = torch.where(done[:, None, None], state["simplex"], simplex)
        fvals = torch.where(done[:, None], state["fvals"], fvals)
        branch = torch.where(done.reshape((-1,) + (1,) * (branch.ndim - 1)), FROZEN, branch)
    new = {"simplex": simplex, "fvals": fvals, "nfev": state["nfev"] + evals, "done": done}
    return new, {"branch": branch, "evals": evals}


STATE_FIELDS = {
    "simplex": "(B, n+1, n) vertices, sorted by f (stable: ties keep their previous order)",
    "fvals": "(B, n+1) f at the vertices, ascending",
    "nfev": "(B,) int64, evaluations so far, counted as scipy counts them",
    "done": "(B,) bool, scipy's convergence test passed; the problem is frozen from then on",
}


@dataclasses.dataclass(frozen=True)
class NelderMead(Teacher):
    """scipy's Nelder–Mead (`minimize(method="Nelder-Mead")`), batched.

    Settings:
        adaptive: Gao & Han's dimension-dependent coefficients (scipy's `adaptive=True`).
        xatol, fatol: scipy's absolute tolerances; None (both) never stops. When set, the test
            runs at the start of each step, as in scipy's loop, and marks the problem done.
    """

    adaptive: bool = False
    xatol: float | None = None
    fatol: float | None = None

    name = "nelder_mead"
    state_fields = STATE_FIELDS
    branches = BRANCHES
    points = "simplex"
    outline = True
    extra_fields = {
        "branch": f"(B,) int64: 0..5 = {', '.join(BRANCHES)}; -1 once done",
        "evals": "(B,) int64, evaluations this step as scipy counts them: 1, 2, n+2; 0 once done",
    }

    def __post_init__(self) -> None:
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"{self.name}: adaptive must be a bool, got {self.adaptive!r}")
        check_tolerances(self.name, self.xatol, self.fatol)

    def init(self, objective: Objective, x0: Tensor) -> State:
        """State from x0 (B, n): scipy's initial simplex, evaluated and sorted."""
        x0 = check_x0(x0, self.name)
        return init_state(objective, initial_simplex(x0))

    def step(self, objective: Objective, state: State) -> tuple[State, dict[str, Tensor]]:
        """One pass of scipy's loop for every problem not yet done."""
        state = check_state(state, self)
        simplex, fvals = state["simplex"], state["fvals"]
        done = state["done"]
        if self.xatol is not None:
            done = done | converged(simplex, fvals, self.xatol, self.fatol)
        coef = coefficients(simplex.shape[-1], self.adaptive)
        return freeze(state, done, *scipy_step(objective, simplex, fvals, coef))

    def trial_points(self, simplex: Tensor) -> dict[str, Tensor]:
        """Every point a step can move a vertex of the sorted simplex (B, n+1, n) to, as
        `scipy_points` (P = 1): the same floats the step evaluates."""
        return scipy_points(simplex, 1, coefficients(simplex.shape[-1], self.adaptive))

    def incumbent(self, state: State) -> Tensor:
        """The best vertex (B, n)."""
        return state["simplex"][:, 0]
