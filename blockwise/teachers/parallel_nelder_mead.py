"""Parallel Nelder–Mead (Lee & Wiswall 2007), batched: the teacher "parallel_nelder_mead".

D. Lee and M. Wiswall, "A parallel implementation of the simplex function minimization routine",
Computational Economics 30(2):171-187 (2007). Each step moves the P worst vertices of the sorted
simplex A_0 (best) .. A_n (worst), each independently, through one centroid M of the n+1-P best
vertices; the simplex shrinks towards A_0 only if all P moves fail. The P moves need no result
from each other, which is what makes the method parallel (and what a transformer block might
compute in one layer).

Two rule sets:

* "scipy": scipy's per-vertex logic and coefficients (`adaptive` included). Vertex j reflects;
  expansion is tried if f(AR_j) < f(A_0) and kept if f(AE_j) < f(AR_j); AR_j is accepted if
  f(AR_j) < f(A_{j-1}), its own predecessor; otherwise an outside (f(AC_j) <= f(AR_j)) or inside
  (f(AC_j) < f(A_j)) contraction, and a failed one leaves A_j in place. The shrink is scipy's,
  A_i <- A_0 + sigma (A_i - A_0) on the original vertices. With P = 1 this is scipy's NM exactly.
* "paper": Section 3 as printed (with its two typos fixed: M divides by n+1-P, not n, and
  AC_j = M + beta (Ã_j - M)), coefficients alpha = gamma = 1, beta = tau = 1/2 (footnote 3).
  Case 1, f(AR_j) < f(A_0): AE_j = AR_j + gamma (AR_j - M), kept if f(AE_j) < f(A_0), else AR_j.
  Case 2, f(AR_j) < f(A_{j-1}): AR_j. Case 3: Ã_j = AR_j if f(AR_j) < f(A_j) else A_j;
  AC_j = M + beta (Ã_j - M), kept if f(AC_j) < f(Ã_j), else Ã_j (so a failed contraction can
  still move the vertex to AR_j). Shrink if every vertex failed: A_i <- tau A_0 + (1 - tau) A_i,
  with Ã_j in place of A_j for the P worst. P = 1 is the paper's Section 2 NM, not scipy's.

The initial simplex is scipy's construction by default (`initial_step=None`); a number s gives the
paper's A_j = A_0 + s e_j (its default s = 1). The paper's restarts are not part of the teacher.

nfev counts the evaluations a sequential per-vertex implementation makes, as scipy counts them:
per moved vertex 1 (AR accepted) or 2 (AE or AC tried), plus n for a shrink. The batched step
computes more candidates than that (all of them, in one objective call), and a parallel machine
would need only 2 rounds (1 + 1 for a shrink); neither is what nfev counts.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from blockwise.problems import Objective
from blockwise.teachers.base import State, Teacher, check_state, check_x0
from blockwise.teachers.nelder_mead import (
    BRANCHES,
    SHRINK,
    STATE_FIELDS,
    centroid,
    check_tolerances,
    coefficients,
    converged,
    evaluate_points,
    finish,
    init_state,
    initial_simplex,
    scipy_moves,
    scipy_points,
    select,
)

# The paper's coefficients (footnote 3): reflection, expansion, contraction, shrink.
ALPHA, GAMMA, BETA, TAU = 1.0, 1.0, 0.5, 0.5
RULES = ("scipy", "paper")


def paper_points(simplex: Tensor, parallelism: int) -> dict[str, Tensor]:
    """Every point Section 3 can move a vertex of the sorted simplex (B, n+1, n) to.

    Returns, for the P worst vertices A_j (worst last) through the centroid M of the n+1-P
    best: "reflect" AR_j, "expand" AE_j, "contract_out" AC_j from Ã_j = AR_j, "contract_in"
    AC_j from Ã_j = A_j, "shrink_reflect" AR_j shrunk towards A_0, each (B, P, n); and
    "shrink" (B, n, n), A_1..A_n shrunk towards A_0.
    """
    n = simplex.shape[-1]
    keep = n + 1 - parallelism
    m = centroid(simplex[:, :keep])[:, None, :]  # (B, 1, n)
    worst = simplex[:, keep:]  # (B, P, n)
    best = simplex[:, :1]
    ar = m + ALPHA * (m - worst)
    return {
        "reflect": ar,
        "expand": ar + GAMMA * (ar - m),
        "contract_out": m + BETA * (ar - m),
        "contract_in": m + BETA * (worst - m),
        "shrink": TAU * best + (1 - TAU) * simplex[:, 1:],
        "shrink_reflect": TAU * best + (1 - TAU) * ar,
    }


def paper_moves(
    objective: Objective, simplex: Tensor, fvals: Tensor, parallelism: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lee & Wiswall's Section 3 step on a sorted simplex (B, n+1, n) with values (B, n+1).

    Returns the unsorted simplex and values, branch (B, P) and evals (B,) as `scipy_moves` does.
    Codes: 0 AE kept, 1 AR after the expansion test, 2 AR (case 2), 3 AC from Ã = AR,
    4 AC from Ã = A_j, 5 contraction failed (vertex -> Ã_j; the simplex shrinks iff all are 5).
    """
    n = simplex.shape[-1]
    keep = n + 1 - parallelism
    worst, best = simplex[:, keep:], simplex[:, :1]  # (B, P, n), (B, 1, n)
    p = paper_points(simplex, parallelism)
    ar, ae, ac_r, ac_w = p["reflect"], p["expand"], p["contract_out"], p["contract_in"]
    shrunk, shrunk_r = p["shrink"], p["shrink_reflect"]  # (B, n, n); (B, P, n) AR_j shrunk
    points = torch.cat([ar, ae, ac_r, ac_w, shrunk, shrunk_r], dim=1)
    f = evaluate_points(objective, points)
    fr, fe, fc_r, fc_w = f[:, : 4 * parallelism].split(parallelism, dim=1)  # each (B, P)
    f_shrunk, f_shrunk_r = f[:, 4 * parallelism : -parallelism], f[:, -parallelism:]

    f_best = fvals[:, :1]
    f_prev = fvals[:, keep - 1 : n]
    f_worst = fvals[:, keep:]
    case1 = fr < f_best
    case2 = ~case1 & (fr < f_prev)
    tilde_is_r = fr < f_worst
    f_tilde = torch.where(tilde_is_r, fr, f_worst)
    fc = torch.where(tilde_is_r, fc_r, fc_w)
    branch = torch.where(case1, torch.where(fe < f_best, 0, 1), torch.where(case2, 2, SHRINK))
    contracted = ~case1 & ~case2 & (fc < f_tilde)
    branch = torch.where(contracted, torch.where(tilde_is_r, 3, 4), branch)

    tilde = torch.where(tilde_is_r[..., None], ar, worst)
    moved = torch.cat([simplex[:, :keep], select(branch[..., None], ae, ar, ac_r, ac_w, tilde)], 1)
    moved_f = torch.cat([fvals[:, :keep], select(branch, fe, fr, fc_r, fc_w, f_tilde)], 1)
    # The shrunk worst vertices start from Ã_j: AR_j's shrink point where Ã_j = AR_j.
    shrunk_worst = torch.where(tilde_is_r[..., None], shrunk_r, shrunk[:, keep - 1 :])
    f_shrunk_worst = torch.where(tilde_is_r, f_shrunk_r, f_shrunk[:, keep - 1 :])
    shrink = (branch == SHRINK).all(dim=1)
    new = torch.where(
        shrink[:, None, None], torch.cat([best, shrunk[:, : keep - 1], shrunk_worst], 1), moved
    )
    new_f = torch.where(
        shrink[:, None], torch.cat([f_best, f_shrunk[:, : keep - 1], f_shrunk_worst], 1), moved_f
    )
    evals = (1 + (branch != 2).long()).sum(dim=1) + n * shrink.long()
    return new, new_f, branch, evals


@dataclasses.dataclass(frozen=True)
class ParallelNelderMead(Teacher):
    """Lee & Wiswall's parallel NM: the P worst vertices move at once, batched.

    Settings:
        parallelism: P, the number of worst vertices moved per step, 1 <= P <= n (checked at init).
        rules: "scipy" (scipy's per-vertex rules; P = 1 is scipy's NM) or "paper" (Section 3).
        adaptive: Gao & Han's coefficients; rules="scipy" only (the paper fixes its own).
        initial_step: None for scipy's initial simplex, or s for the paper's A_j = x0 + s e_j.
        xatol, fatol: scipy's convergence test, as in `nelder_mead`; None (both) never stops.
    """

    parallelism: int = 1
    rules: str = "scipy"
    adaptive: bool = False
    initial_step: float | None = None
    xatol: float | None = None
    fatol: float | None = None

    name = "parallel_nelder_mead"
    state_fields = STATE_FIELDS
    branches = BRANCHES
    points = "simplex"
    outline = True
    extra_fields = {
        "branch": f"(B, P) int64 per moved vertex, worst last: 0..5 = {', '.join(BRANCHES)} "
        "(5: its contraction failed; the simplex shrank iff all P are 5); -1 once done",
        "evals": "(B,) int64, evaluations this step as a sequential run counts them; 0 once done",
    }

    def __post_init__(self) -> None:
        where = self.name
        p = self.parallelism
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ValueError(f"{where}: parallelism must be an int >= 1, got {self.parallelism!r}")
        if self.rules not in RULES:
            raise ValueError(f"{where}: rules must be one of {RULES}, got {self.rules!r}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"{where}: adaptive must be a bool, got {self.adaptive!r}")
        if self.adaptive and self.rules == "paper":
            raise ValueError(
                f"{where}: adaptive=True needs rules='scipy' (the paper fixes "
                "alpha, gamma, beta, tau)"
            )
        step = self.initial_step
        if step is not None and not (
            isinstance(step, (int, float)) and step != 0 and abs(step) < float("inf")
        ):
            raise ValueError(
                f"{where}: initial_step must be None or a finite nonzero number, got {step!r}"
            )
        check_tolerances(where, self.xatol, self.fatol)

    def _check_parallelism(self, n: int) -> None:
        if self.parallelism > n:
            raise ValueError(
                f"{self.name}: parallelism must be <= n = {n} (the simplex has n+1 vertices "
                f"and keeps at least the best), got {self.parallelism}"
            )

    def init(self, objective: Objective, x0: Tensor) -> State:
        """State from x0 (B, n): the initial simplex, evaluated and sorted."""
        x0 = check_x0(x0, self.name)
        self._check_parallelism(x0.shape[1])
        return init_state(objective, initial_simplex(x0, self.initial_step))

    def step(self, objective: Objective, state: State) -> tuple[State, dict[str, Tensor]]:
        """Move the P worst vertices of every problem not yet done."""
        state = check_state(state, self)
        simplex, fvals = state["simplex"], state["fvals"]
        self._check_parallelism(simplex.shape[-1])
        done = state["done"] | converged(simplex, fvals, self.xatol, self.fatol)
        if self.rules == "scipy":
            coef = coefficients(simplex.shape[-1], self.adaptive)
            moves = scipy_moves(objective, simplex, fvals, self.parallelism, coef)
        else:
            moves = paper_moves(objective, simplex, fvals, self.parallelism)
        return finish(state, done, *moves)

    def trial_points(self, simplex: Tensor) -> dict[str, Tensor]:
        """Every point a step can move a vertex of the sorted simplex (B, n+1, n) to, under
        this teacher's rules: `scipy_points` or `paper_points`, the same floats the step
        evaluates."""
        if self.rules == "scipy":
            coef = coefficients(simplex.shape[-1], self.adaptive)
            return scipy_points(simplex, self.parallelism, coef)
        return paper_points(simplex, self.parallelism)

    def incumbent(self, state: State) -> Tensor:
        """The best vertex (B, n)."""
        return state["simplex"][:, 0]
