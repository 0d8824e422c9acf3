"""The teacher's intermediate quantities on the state a layer receives, in that layer's frame.

A layer's residual stream holds its input state encoded in the frame of that state
(`Encoded.frame`), so each quantity is computed from the same state, in float64, by the
teacher's own functions, and brought into the same frame: a point x as frame.points_to(x), a
value f as (f - f_shift) / f_scale, a gradient times s / f_scale. What a probe should find is
what the step needs but the token slots do not hold.

Quantities, per problem (shape without the batch dimension):
    Nelder-Mead, parallel Nelder-Mead (P worst vertices move; P = 1 for scipy's):
        centroid         (n)     the centroid of the n+1-P best vertices
        reflected_point  (P n)   the reflection of each moved vertex through it
        f_reflected      (P)     f at the reflected points
        f_trials         (4 P)   f at the expansion, reflection, outside and inside contraction
        moved            class   which vertices the step moves: the P worst (less those whose
                                 contraction failed), or all but the best on a shrink
        branch           class   the branch taken (nelder_mead.BRANCHES; the worst vertex's for
                                 P > 1, as evaluation splits errors)
    gradient teachers (gradient descent, momentum, Adam):
        gradient         (n)     df/dx at the iterate
        residuals        (N)     least squares only: w.x_i - y_i per context pair, from which a
                                 linear-attention layer computes the gradient (von Oswald et
                                 al. 2023)
    CMA-ES:
        f_candidates     (lambda)  f at the generation's candidates
        candidate_ranks  (lambda)  each candidate's rank by f (0 the best)
        mean_shift       (n)     <y>_w, the weighted mean of the mu best steps (x - m) / sigma

Rows where a quantity is not defined (a problem already done, a non-finite value) are NaN, or
class -1.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from blockwise.codec import CMACodec, Encoded, GradientCodec, SimplexCodec
from blockwise.codec import frame as frames
from blockwise.problems import Problem, evaluate, gradient
from blockwise.teachers.nelder_mead import BRANCHES, SHRINK, centroid

TRIAL_KINDS = ("expand", "reflect", "contract_out", "contract_in")


@dataclasses.dataclass(frozen=True)
class Quantity:
    """values: (B, q) float64 for a quantity, (B,) int64 for classes (-1: not defined);
    classes: the class names, by code, or None for a quantity; meaning: one line."""

    values: Tensor
    meaning: str
    classes: dict[int, str] | None = None

    @property
    def defined(self) -> Tensor:
        """(B,) bool: the rows where the quantity is defined and finite."""
        if self.classes is not None:
            return self.values >= 0
        return torch.isfinite(self.values).all(-1)


def teacher_quantities(enc: Encoded, problem: Problem, codec) -> dict[str, Quantity]:
    """Name -> Quantity for the state enc.state encoded by `codec` on `problem`, in enc's
    frame (the module docstring lists them)."""
    if isinstance(codec, SimplexCodec):
        return simplex_quantities(enc, problem, codec)
    if isinstance(codec, GradientCodec):
        return gradient_quantities(enc, problem)
    if isinstance(codec, CMACodec):
        return cma_quantities(enc, problem, codec)
    raise ValueError(f"probes: no teacher quantities for {type(codec).__name__}")


def simplex_quantities(
    enc: Encoded, problem: Problem, codec: SimplexCodec
) -> dict[str, Quantity]:
    state, frame, teacher = enc.state, enc.frame, codec.teacher
    simplex = state["simplex"]
    n, moved = simplex.shape[-1], codec.parallelism
    keep = n + 1 - moved
    points = teacher.trial_points(simplex)
    kinds = [k for k in TRIAL_KINDS if k in points]
    trials = torch.cat([points[k] for k in kinds], 1)  # (B, 4 P, n)
    f = frames.values_to(frame, evaluate(problem, trials).to(trials.dtype))
    reflect = kinds.index("reflect") * moved
    _, extras = teacher.step(problem, state)
    codes = extras["branch"].reshape(simplex.shape[0], -1)  # (B, P), worst last
    done = (codes < 0).any(-1)

    def unset(v: Tensor) -> Tensor:
        return v.masked_fill(done.reshape((-1,) + (1,) * (v.ndim - 1)), torch.nan)

    mask, names = _moved(codes, n)
    return {
        "centroid": Quantity(
            unset(frame.points_to(centroid(simplex[:, :keep])[:, None])[:, 0]),
            f"the centroid of the {keep} best vertices",
        ),
        "reflected_point": Quantity(
            unset(frame.points_to(points["reflect"]).flatten(1)),
            "the reflection of the moved vertex through the centroid",
        ),
        "f_reflected": Quantity(unset(f[:, reflect : reflect + moved]), "f at the reflected point"),
        "f_trials": Quantity(unset(f), "f at the " + ", ".join(kinds) + " points"),
        "moved": Quantity(mask.masked_fill(done, -1), "which vertices the step moves", names),
        "branch": Quantity(codes[:, -1].masked_fill(done, -1), "the branch the step takes",
                           dict(enumerate(BRANCHES))),
    }


def _moved(codes: Tensor, n: int) -> tuple[Tensor, dict[int, str]]:
    """The moved vertices as a class (B,): the bit mask of their ranks; and its names."""
    moved = codes.shape[1]
    ranks = torch.arange(n + 1 - moved, n + 1)
    shrink = (codes == SHRINK).all(-1)
    bits = ((codes != SHRINK).long() << ranks).sum(-1)
    bits = torch.where(shrink, (1 << torch.arange(1, n + 1)).sum(), bits)
    names = {}
    for code in torch.unique(bits).tolist():
        listed = ", ".join(str(r) for r in range(n + 1) if code >> r & 1)
        names[code] = f"ranks {listed}" + (" (shrink)" if code == (1 << (n + 1)) - 2 else "")
    return bits, names


def gradient_quantities(enc: Encoded, problem: Problem) -> dict[str, Quantity]:
    x, frame = enc.state["x"], enc.frame
    g = gradient(problem, x[:, None, :])[:, 0].to(x.dtype)
    out = {"gradient": Quantity(g * frames.gradient_factor(frame, g), "df/dx at the iterate")}
    if problem.family == "least_squares":
        p = problem.params
        residual = (x[:, None, :] * p["x"].to(x)).sum(-1) - p["y"].to(x)
        out["residuals"] = Quantity(
            residual / frame.scale[:, None], "w.x_i - y_i per context pair"
        )
    return out


def cma_quantities(enc: Encoded, problem: Problem, codec: CMACodec) -> dict[str, Quantity]:
    state, frame, teacher = enc.state, enc.frame, codec.teacher
    x = teacher.candidates(state, project=True)
    f = evaluate(problem, x).to(x.dtype)
    order = torch.argsort(f, dim=-1, stable=True)
    ranks = torch.argsort(order, dim=-1).to(x.dtype)
    p = teacher.params(x.shape[-1])
    weights = torch.tensor(p.weights[: p.mu], dtype=x.dtype)
    best = torch.take_along_dim(x, order[:, : p.mu, None], dim=1)
    mean = torch.einsum("i,bin->bn", weights, best)
    return {
        "f_candidates": Quantity(frames.values_to(frame, f), "f at the candidates"),
        "candidate_ranks": Quantity(ranks, "each candidate's rank by f"),
        "mean_shift": Quantity(
            frame.points_to(mean[:, None])[:, 0], "the weighted mean of the mu best steps"
        ),
    }
