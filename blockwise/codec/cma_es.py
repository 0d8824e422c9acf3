"""The CMA-ES codec: the distribution as optimizer tokens, the generation's samples as candidates.

Serves "cma_es". Tokens, after the problem tokens (in_context mode only):

    kind       count   slots                  holds
    mean       1       coords                 the mean m
    sigma      1       sigma                  the step size
    p_sigma    1       p_sigma, generation    the conjugate path, and the generation count g
                                              (h_sigma depends on ||p_sigma|| and g together)
    p_c        1       p_c                    the rank-one path
    C_row      n       index, C               row i of C (index i)
    candidate  lambda  coords (, f, rank)     the generation's points x_k, in sampling order;
                                              in oracle mode only f(x_k) and its rank

Slots: type, one, index (n), coords (n), f (1) and rank (lambda) in oracle mode only, sigma (1),
p_sigma (n), generation (1), p_c (n), C (n), then one group per problem token group. The
candidates are the ones `CMAES.step` samples (`CMAES.candidates`): the draws come from the
state's key, so they are an input, not something to emulate. An emulated C that is not positive
definite is sampled from its nearest positive semi-definite matrix (the teacher would give NaN),
and the points' gradient in C stays finite at repeated eigenvalues (fine-tuning trains through
them).
Candidates carry no index: the update does not depend on their order, only on their f ranks.

Objective modes: in_context leaves the candidates' f out, so the network must evaluate f at
each of them from the problem tokens and rank them. oracle gives each candidate's f and its rank
(a one-hot, 0 = best, ties broken by sampling order as the teacher's stable sort does), and the
problem tokens are left out: CMA-ES reads f only through the ranks, so the update needs nothing
else of f, and a block learns the weights, paths, step size and covariance from them.

Frames: centre = m, f_shift = min_k f(x_k), f_scale = max_k f(x_k) - min_k f(x_k) (floored at
float resolution, see `frame.floor`), and a linear map L:

    scale   L = sigma I: candidates are y_k = C^1/2 z_k, the mean is 0 and sigma is 1 on input.
            C and the paths are already scale-free and are not transformed.
    affine  L = sigma C^1/2 (E, frame.scale = sigma): the distribution becomes N(0, I), so
            candidates are the draws z_k themselves, C is I and p_c is C^-1/2 p_c on input.
            CMA-ES is invariant under affine maps of the search space (Hansen, arXiv:1604.00772,
            sec. 4, with the symmetric root as the whitening), so in this frame its update reads
            only z, the ranks, p_sigma, C^-1/2 p_c and g: eqs. (41)-(47) with C = I, the same at
            every generation. The map is M = L / sigma: C <-> M C' M^T, p_c <-> M p_c'; p_sigma
            is already whitened and is not transformed. A C whose root is degenerate (cond >= 1e4,
            singular, not finite) falls back to the scale frame in its row (`frame.guarded_edges`).

The f values are computed at encode time in both modes when framed; in in_context mode they
reach the network only through the frame (the problem tokens' curvature and offset).

Learned fields: mean, sigma, C, p_sigma, p_c. Not emulated: generation is advanced by one and
key is carried (the next generation's draws follow from them, as in the teacher).
"""

from __future__ import annotations

import torch
from torch import Tensor

from blockwise.codec import frame as frames
from blockwise.codec.base import Codec, Placement
from blockwise.codec.layout import Segment
from blockwise.problems import Frame, Objective, evaluate
from blockwise.teachers.base import State


class CMACodec(Codec):
    """Mean, sigma, path and C-row tokens, and one token per candidate."""

    learned_fields = ("mean", "sigma", "C", "p_sigma", "p_c")
    bookkeeping = {
        "generation": "advanced by one",
        "key": "carried unchanged",
    }
    index_meaning = "which row of C"
    frame_kinds = frames.KINDS

    def _configure(self) -> None:
        self.popsize = self.teacher.params(self.dim).popsize

    def _slots(self) -> dict[str, tuple[int, str]]:
        n = self.dim
        slots = {"coords": (n, "point coordinates (mean, candidates)")}
        if self.mode == "oracle":
            slots["f"] = (1, "f at the candidate")
            slots["rank"] = (self.popsize, "the candidate's rank by f, one-hot (0 = best)")
        slots.update(
            sigma=(1, "step size"),
            p_sigma=(n, "conjugate evolution path"),
            generation=(1, "generations done so far (input only)"),
            p_c=(n, "evolution path"),
            C=(n, "a row of the covariance matrix"),
        )
        return slots

    def _segments(self) -> list[Segment]:
        n = self.dim
        candidate_slots = ("coords", "f", "rank") if self.mode == "oracle" else ("coords",)
        return [
            Segment("mean", 1, ("coords",), "distribution mean"),
            Segment("sigma", 1, ("sigma",), "step size"),
            Segment("p_sigma", 1, ("p_sigma", "generation"), "conjugate path, generation"),
            Segment("p_c", 1, ("p_c",), "evolution path"),
            Segment("C_row", n, ("C",), "rows of C", tuple(range(n))),
            Segment("candidate", self.popsize, candidate_slots, "the generation's samples"),
        ]

    def _placements(self) -> dict[str, Placement]:
        n = self.dim
        return {
            "mean": Placement("mean", "coords", (n,)),
            "sigma": Placement("sigma", "sigma", ()),
            "C": Placement("C_row", "C", (n, n)),
            "p_sigma": Placement("p_sigma", "p_sigma", (n,)),
            "p_c": Placement("p_c", "p_c", (n,)),
        }

    def _inputs(self, state: State, objective: Objective) -> dict[str, Tensor]:
        """candidates (B, lambda, n), the root C^1/2 (B, n, n) they were sampled with and, where
        the tokens or the frame need them, f (B, lambda)."""
        # An emulated C may leave the positive definite cone; sampling from its nearest
        # positive semi-definite matrix gives the next block finite points (and finite
        # gradients) where the teacher's NaN would poison the batch's loss.
        root = self.teacher.root(state, project=True)
        x = self.teacher.sample(state, root)
        inputs = {"candidates": x, "root": root}  # the affine frame reuses the root
        if self.mode == "oracle" or self.framed:
            inputs["f"] = evaluate(objective, x).to(x.dtype)
        return inputs

    def _frame(self, state: State, inputs: dict[str, Tensor]) -> Frame:
        f = inputs["f"]
        f_min = f.amin(dim=1)
        f_scale = frames.floor(f.amax(dim=1) - f_min, f.abs().amax(dim=1))
        scale = state["sigma"].clamp_min(torch.finfo(f.dtype).tiny)
        if self.frame != "affine":
            return Frame(state["mean"], scale, f_min, f_scale)
        edges = frames.guarded_edges(scale[:, None, None] * inputs["root"], scale)
        return Frame(state["mean"], scale, f_min, f_scale, edges)

    def _put_inputs(
        self, tokens: Tensor, state: State, inputs: dict[str, Tensor], frame: Frame
    ) -> None:
        x = frames.points_to(frame, inputs["candidates"])
        self.layout.put(tokens, "candidate", "coords", x)
        if self.mode == "oracle":
            f = frames.values_to(frame, inputs["f"])
            self.layout.put(tokens, "candidate", "f", f[..., None])
            # the rank of x_k is its position in the teacher's stable sort of f (B, lambda)
            rank = torch.argsort(torch.argsort(inputs["f"], dim=1, stable=True), dim=1)
            one_hot = torch.nn.functional.one_hot(rank, self.popsize)
            self.layout.put(tokens, "candidate", "rank", one_hot.to(tokens.dtype))
        generation = state["generation"].to(tokens.dtype)
        self.layout.put(tokens, "p_sigma", "generation", generation[:, None, None])

    def _to_frame(self, state: State, frame: Frame) -> dict[str, Tensor]:
        C, p_c = state["C"], state["p_c"]
        if frame.affine:
            M = _whitening(frame)
            C = torch.linalg.solve(M, torch.linalg.solve(M, C).mT)  # M^-1 C M^-T
            C = (C + C.mT) / 2
            p_c = torch.linalg.solve(M, p_c[..., None]).squeeze(-1)
        return {
            "mean": frames.points_to(frame, state["mean"]),
            "sigma": state["sigma"] / frame.scale,
            "C": C,
            "p_sigma": state["p_sigma"],
            "p_c": p_c,
        }

    def _from_frame(self, fields: dict[str, Tensor], frame: Frame) -> dict[str, Tensor]:
        C, p_c = fields["C"], fields["p_c"]
        if frame.affine:
            M = _whitening(frame)
            C = M @ C @ M.mT
            C = (C + C.mT) / 2
            p_c = (M @ p_c[..., None]).squeeze(-1)
        return {
            "mean": frames.points_from(frame, fields["mean"]),
            "sigma": fields["sigma"] * frame.scale,
            "C": C,
            "p_sigma": fields["p_sigma"],
            "p_c": p_c,
        }

    def _carry(self, state: State, fields: dict[str, Tensor], objective: Objective) -> State:
        return {"generation": state["generation"] + 1, "key": state["key"]}


def _whitening(frame: Frame) -> Tensor:
    """M = E / sigma (B, n, n) of an affine CMA-ES frame: C^1/2, or I in a fallback row."""
    return frame.edges / frame.scale[:, None, None]
