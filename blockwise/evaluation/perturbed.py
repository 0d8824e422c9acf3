"""The teacher with a known one-step error: how deep does per-step accuracy alone carry a stack?

A stack breaks down where its rollout error crosses 1. Whether that depth is set by its blocks'
one-step accuracy or by how fast the optimizer itself amplifies a small error is a question about
the teacher, which this control answers without training anything:

    stack = PerturbedTeacher(codec, eps=0.01, depth=96)
    metrics = evaluate_stack(stack, problem, traj)   # as any stack's

Layer k is the teacher's exact step from the layer's input, after which every learned field is
moved by eps times the teacher's own move at that step, in a uniformly random direction. Its
teacher-forced error is therefore eps (exactly, up to a Nelder–Mead simplex re-sorted by f), and
its rollout error grows only as fast as the optimizer carries an error of that size forward:
the depth that per-step accuracy explains. A trained stack whose breakdown depth matches this
control's at its own teacher-forced error is limited by its blocks' accuracy, not by anything
depth adds. A block's errors are not isotropic noise, so the match is a reading, not a bound:
the stack can do better than its error sizes in random directions (its errors fall where they
cost little) or worse (they share a direction and add up).

The perturbed fields go through the codec's decode, so a layer's bookkeeping is the trained
stack's (the codec's `bookkeeping`): with `codec.vertex_f: evaluated`, f re-evaluated at the
vertices and the simplex re-sorted by it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from blockwise.problems import Problem
from blockwise.teachers import State


class PerturbedTeacher(nn.Module):
    """A stack (duck-typed for `evaluate_stack`) whose layer k is the teacher's step plus an
    error of normalized size eps_k in every learned field.

    Args:
        codec: the codec of the stack this control stands beside (its teacher and
            bookkeeping).
        eps: the one-step error, finite and >= 0: one number for every layer, one per layer
            (L,), or one per layer and problem (L, B) (a trained stack's own teacher-forced
            errors, say, so that only their directions are random).
        depth: the layers it runs (K); with per-layer eps, at most L.
        seed: the noise's seed; noise is drawn in order of the calls, on the CPU in float64.
    """

    def __init__(self, codec, eps: float | list[float] | Tensor, depth: int, seed: int = 0):
        super().__init__()
        eps = torch.as_tensor(eps, dtype=torch.float64)
        if eps.ndim > 2 or not bool((eps.isfinite() & (eps >= 0)).all()):
            raise ValueError(
                "perturbed teacher: eps must be finite and >= 0, a number, (L,) or (L, B); got "
                f"shape {tuple(eps.shape)}, min {eps.min().item() if eps.numel() else None}"
            )
        if eps.ndim and eps.shape[0] < depth:
            raise ValueError(f"perturbed teacher: eps for {eps.shape[0]} layers, {depth} asked")
        self.codec, self.depth, self.eps = codec, depth, eps
        self.generator = torch.Generator().manual_seed(seed)

    def layer(self, k: int, state: State, problem: Problem) -> State:
        """The teacher's step from `state`, each learned field then moved by eps_k times its
        move in a random direction, decoded as a block's output would be."""
        eps = (self.eps if self.eps.ndim == 0 else self.eps[k - 1]).reshape(-1, 1)  # (1|B, 1)
        enc = self.codec.encode(state, problem)
        exact, _ = self.codec.teacher.step(problem, enc.state)
        moved = {
            f: exact[f] + self._offset(exact[f] - enc.state[f], eps)
            for f in self.codec.learned_fields
        }
        tokens = self.codec.write(enc.tokens, self.codec.to_frame({**exact, **moved}, enc.frame))
        return self.codec.decode(tokens, enc)

    def _offset(self, move: Tensor, eps: Tensor) -> Tensor:
        """eps (1|B, 1) times the norm of `move` (B, ...) over its non-batch dims
        (`blockwise.errors`' norm), in a random direction per problem."""
        batch = move.shape[0]
        noise = torch.randn(move.numel(), generator=self.generator, dtype=torch.float64)
        noise = noise.reshape(batch, -1)
        noise = noise / noise.norm(dim=1, keepdim=True)
        scale = eps * move.reshape(batch, -1).double().cpu().norm(dim=1, keepdim=True)
        return (noise * scale).reshape(move.shape).to(move)

    def extra_repr(self) -> str:
        eps = f"{self.eps.item():g}" if self.eps.ndim == 0 else f"{tuple(self.eps.shape)}"
        return f"layers={self.depth}, eps={eps}, codec={type(self.codec).__name__}"
