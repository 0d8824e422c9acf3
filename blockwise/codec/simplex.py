"""The Nelder–Mead codec: a sorted simplex as n+1 vertex tokens.

Serves "nelder_mead" and "parallel_nelder_mead" (P = `parallelism` worst vertices move per
step; P = 1 for "nelder_mead"). Tokens, after the problem tokens (in_context mode only):

    kind            count  index       coords  f      holds
    vertex          n+1    rank 0..n   v_i     f_i    the sorted simplex, best first
    oracle mode only, every point the step can move a vertex to, with its f:
    reflect         P      rank j      xr_j    f      reflection of moved vertex j (ranks n+1-P..n)
    expand          P      rank j      xe_j    f      expansion
    contract_out    P      rank j      xc_j    f      outside contraction
    contract_in     P      rank j      xcc_j   f      inside contraction
    shrink          n      rank i      s_i     f      vertex i >= 1 shrunk towards the best
    shrink_reflect  P      rank j      sr_j    f      rules="paper" only: xr_j shrunk (the
                                                      paper shrinks Ã_j, which may be xr_j)

Slots: type, one, index (n+1, the rank: NM's rules depend on it), coords (n), f (1), then one
group per problem token group. The vertex index one-hot gives each token its rank, which the
comparisons f_r < f_0, f_r < f_{j-1}, f_r < f_j need.

Objective modes: in_context gives the current vertices and their f, and the network must compute
f at whatever points it moves to. oracle computes every trial point and shrink point here, by the
teacher's own `trial_points` (its rules and coefficients: scipy's, Gao & Han's adaptive ones, or
Lee & Wiswall's; so they are the same floats the step evaluates), evaluates them, and gives them
as tokens: the next simplex is then a selection of tokens (sorted), and the problem tokens are
left out.

Frames: f_shift = f_0 and f_scale = f_n - f_0 (floored at float resolution, see `frame.floor`)
in both, so the input simplex has f in [0, 1].
    scale   centre = the best vertex v_0, scale = max_i ||v_i - v_0||_inf (floored likewise):
            the input simplex has coordinates in [-1, 1] with v_0 at 0.
    affine  x = v_0 + E x', E = [v_1 - v_0, ..., v_n - v_0] (n x n) of the sorted simplex: the
            input simplex is 0, e_1, ..., e_n at every step. Nelder–Mead is affine-equivariant
            (its branch depends only on the order of the f values, its next simplex is an
            affine combination of the current vertices), so in this frame the teacher's next
            vertices lie in a finite set of points fixed by the coefficients (e.g. the
            reflection (1 + rho) xbar' - rho e_n, xbar' = (e_1 + ... + e_{n-1}) / n), whatever
            the step k. Degenerate rows (cond(E) >= 1e4, see `frame.guarded_edges`) fall back
            to the scale frame, so every problem is still encoded and scored.

Learned fields: simplex, fvals (the next sorted simplex, read from the vertex tokens). Between
layers of a stack, the vertices' f values are the layer's own output (vertex_f="own") or f
re-evaluated by the harness at the vertices it output (vertex_f="evaluated"); either way a
block is trained to output both, and in context the network evaluates f itself at every point
it moves to. With its own values an in-context stack's f error compounds: the f values of the
vertices it keeps carry their error while the simplex, and with it the frame's f scale, shrinks.
Not emulated: nfev is carried unchanged (its increment depends on the branch taken) and so is
done (the xatol / fatol convergence test is not emulated: use rollouts without tolerances, or
leave done rows out, whose target equals their input).
"""

from __future__ import annotations

import torch
from torch import Tensor

from blockwise.codec import frame as frames
from blockwise.codec.base import Codec, Encoded, Placement
from blockwise.codec.layout import Segment
from blockwise.problems import Frame, Objective, evaluate
from blockwise.teachers.base import State
from blockwise.teachers.nelder_mead import sort_simplex
from blockwise.teachers.parallel_nelder_mead import ParallelNelderMead

TRIALS = {
    "reflect": "reflection xr of a moved vertex",
    "expand": "expansion xe",
    "contract_out": "outside contraction xc",
    "contract_in": "inside contraction xcc",
}


class SimplexCodec(Codec):
    """Vertex tokens with rank one-hots; in oracle mode also trial and shrink point tokens."""

    learned_fields = ("simplex", "fvals")
    bookkeeping = {
        "nfev": "carried unchanged (its increment depends on the branch taken)",
        "done": "carried unchanged (the xatol / fatol convergence test is not emulated)",
    }
    index_meaning = "vertex rank; for a trial or shrink point, the rank of the vertex it moves"
    frame_kinds = frames.KINDS
    vertex_f_kinds = ("own", "evaluated")
    vertex_set = ("simplex", "fvals")

    def _configure(self) -> None:
        parallel = isinstance(self.teacher, ParallelNelderMead)
        self.parallelism = self.teacher.parallelism if parallel else 1
        self.rules = self.teacher.rules if parallel else "scipy"
        if self.parallelism > self.dim:
            raise ValueError(
                f"{self.name} codec: parallelism must be <= n = {self.dim}, "
                f"got {self.parallelism}"
            )

    def _slots(self) -> dict[str, tuple[int, str]]:
        return {"coords": (self.dim, "point coordinates"), "f": (1, "f at the point")}

    def _segments(self) -> list[Segment]:
        n, p = self.dim, self.parallelism
        ranks = tuple(range(n + 1))
        segments = [Segment("vertex", n + 1, ("coords", "f"), "simplex, best first", ranks)]
        if self.mode == "oracle":
            moved = ranks[n + 1 - p :]
            segments += [Segment(k, p, ("coords", "f"), m, moved) for k, m in TRIALS.items()]
            segments.append(Segment("shrink", n, ("coords", "f"), "shrink points", ranks[1:]))
            if self.rules == "paper":
                meaning = "reflections shrunk towards the best"
                segments.append(Segment("shrink_reflect", p, ("coords", "f"), meaning, moved))
        return segments

    def _placements(self) -> dict[str, Placement]:
        n = self.dim
        return {
            "simplex": Placement("vertex", "coords", (n + 1, n)),
            "fvals": Placement("vertex", "f", (n + 1,)),
        }

    def _inputs(self, state: State, objective: Objective) -> dict[str, Tensor]:
        """Oracle mode: trial and shrink points (B, count, n) and, under "f_" + kind, their f."""
        if self.mode != "oracle":
            return {}
        points = self.teacher.trial_points(state["simplex"])
        stacked = torch.cat(list(points.values()), dim=1)
        f = evaluate(objective, stacked).to(stacked.dtype)  # one call for all of them
        counts = [x.shape[1] for x in points.values()]
        values = {"f_" + kind: v for kind, v in zip(points, f.split(counts, dim=1), strict=True)}
        return {**points, **values}

    def _frame(self, state: State, inputs: dict[str, Tensor]) -> Frame:
        simplex, fvals = state["simplex"], state["fvals"]
        best = simplex[:, 0]
        spread = (simplex - best[:, None, :]).abs().amax(dim=(1, 2))
        scale = frames.floor(spread, simplex.abs().amax(dim=(1, 2)))
        f_scale = frames.floor(fvals[:, -1] - fvals[:, 0], fvals.abs().amax(dim=1))
        if self.frame == "scale":
            return Frame(best, scale, fvals[:, 0], f_scale)
        edges = frames.guarded_edges((simplex[:, 1:] - best[:, None, :]).mT, scale)
        return Frame(best, torch.ones_like(scale), fvals[:, 0], f_scale, edges)

    def _put_inputs(
        self, tokens: Tensor, state: State, inputs: dict[str, Tensor], frame: Frame
    ) -> None:
        for kind in self.positions:
            if kind in inputs:
                self.layout.put(tokens, kind, "coords", frames.points_to(frame, inputs[kind]))
                f = frames.values_to(frame, inputs["f_" + kind])
                self.layout.put(tokens, kind, "f", f[..., None])

    def _to_frame(self, state: State, frame: Frame) -> dict[str, Tensor]:
        return {
            "simplex": frames.points_to(frame, state["simplex"]),
            "fvals": frames.values_to(frame, state["fvals"]),
        }

    def _from_frame(self, fields: dict[str, Tensor], frame: Frame) -> dict[str, Tensor]:
        return {
            "simplex": frames.points_from(frame, fields["simplex"]),
            "fvals": frames.values_from(frame, fields["fvals"]),
        }

    def _carry(self, state: State, fields: dict[str, Tensor], objective: Objective) -> State:
        return {"nfev": state["nfev"], "done": state["done"]}

    def decode(self, tokens: Tensor, enc: Encoded) -> State:
        """As `Codec.decode`, with f at the vertices evaluated if vertex_f is "evaluated", and
        the vertices sorted by their f values: a teacher's
        simplex is best first, and the next layer's frame, rank slots and trial points assume
        it, while a block's output vertices need not come in that order."""
        state = super().decode(tokens, enc)
        if self.vertex_f == "evaluated":
            state["fvals"] = evaluate(enc.objective, state["simplex"]).to(state["fvals"])
        state["simplex"], state["fvals"] = sort_simplex(state["simplex"], state["fvals"])
        return state
