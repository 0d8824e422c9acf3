"""Layers alike? Whether a stack became one optimizer step repeated or a pipeline of distinct
stages.

    cka = linear_cka(x, y)            # x (N, p), y (N, q): the same N problems

Compared here:
    interchange   block l applied to the teacher's s_{k-1} against s_k: the median
                  teacher-forced error (evaluation's normalized error, the identity scores 1)
                  of every probed layer's block at every probed step. Blocks that compute
                  one step score on every row as on the diagonal; a pipeline of stages scores
                  well only there.
    updates       linear CKA (Kornblith et al. 2019, ICML, Eq. 5) between layers' updates to
                  the stream (hook_resid_post - hook_resid_pre) on the states the stack reaches
    same_inputs   linear CKA between the blocks' updates on one pooled set of stream inputs
                  (some problems from every layer)
    weights       cosine between two blocks' weight matrices, flattened
    qk, ov        cosine between two blocks' attention circuits summed over heads, W_Q^T W_K
                  and W_O W_V (width x width), which do not change when heads are permuted or a
                  head's space is rotated, as the raw weights do (an MLP's hidden units can be
                  permuted too, so `weights` can miss blocks that agree)
CKA is invariant to rotations and scalings of either representation. That makes it blind to
what differs between two random maps of the same inputs: wide random projections nearly keep
the inputs' inner products, so untrained blocks score near 1 on shared inputs. Read it beside
its untrained control; `interchange` says whether the blocks compute the same step.
A looped stack has one block: every layer applies it, so there is nothing to interchange and
the weights and circuits are one; the CKAs compare one function on different layers' states.
"""

from __future__ import annotations

import torch
from torch import Tensor

from blockwise.evaluation.teacher_forced import one_step_errors
from blockwise.model import Block
from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.stack import Stack


def _centred(x: Tensor) -> Tensor:
    x = x.double().reshape(x.shape[0], -1)
    return x - x.mean(0)


def _self_norm(x: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(x.T @ x)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between x (N, ...) and y (N, ...), each flattened to one row per problem:
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X and Y; NaN if either is
    constant."""
    x, y = _centred(x), _centred(y)
    norm = _self_norm(x) * _self_norm(y)
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / norm) if norm > 0 else float("nan")


def cka_matrix(reps: list[Tensor]) -> list[list[float]]:
    """(L, L) linear CKA between every two representations (N, ...) of the same problems,
    each pair multiplied out once."""
    reps = [_centred(r) for r in reps]
    norms = [_self_norm(r) for r in reps]
    out = [[float("nan")] * len(reps) for _ in reps]
    for i, a in enumerate(reps):
        for j in range(i, len(reps)):
            norm = norms[i] * norms[j]
            value = torch.linalg.matrix_norm(reps[j].T @ a) ** 2 / norm if norm > 0 else None
            out[i][j] = out[j][i] = float("nan") if value is None else float(value)
    return out


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def weight_vector(block: Block) -> Tensor:
    """The block's weight matrices (parameters with 2 or more dimensions), flattened, in
    order: biases and norm gains, near 0 and 1 in every block, would make any two alike."""
    return torch.cat([p.detach().flatten() for p in block.parameters() if p.ndim >= 2])


def circuits(block: Block) -> tuple[Tensor, Tensor]:
    """(QK, OV), each (width, width): sum over heads of W_Q^h^T W_K^h and of W_O^h W_V^h."""
    attn = block.attn
    width = attn.width
    w_q, w_k, w_v = attn.qkv.weight.detach().double().split(width, dim=0)
    qk = w_q.T @ w_k  # the heads' blocks summed: q.k = sum_h h^T W_Q^h^T W_K^h h
    ov = attn.out.weight.detach().double() @ w_v
    return qk, ov


def block_similarity(blocks: list[Block]) -> dict[str, list[list[float]]]:
    """{"weights", "qk", "ov"}: (K, K) cosines between the blocks."""
    vectors = [weight_vector(b) for b in blocks]
    pairs = [circuits(b) for b in blocks]
    return {
        "weights": [[cosine(a, b) for b in vectors] for a in vectors],
        "qk": [[cosine(a[0], b[0]) for b in pairs] for a in pairs],
        "ov": [[cosine(a[1], b[1]) for b in pairs] for a in pairs],
    }


@torch.no_grad()
def interchange(
    stack: Stack, problem: Problem, traj: Trajectory, steps: list[int]
) -> list[list[float]]:
    """(S, S), or (S, 1) for a looped stack: [i][j] the median teacher-forced error of the
    primary field of the block of layer steps[j] (a looped stack's one block) on step steps[i]
    (`one_step_errors`), over the problems of `traj` (at least max(steps) steps)."""
    field = stack.codec.learned_fields[0]
    blocks = [1] if stack.looped else steps
    return [[float(one_step_errors(stack, problem, traj, k, block)[field].nanmedian())
             for block in blocks] for k in steps]


@torch.no_grad()
def same_input_updates(blocks: list[Block], inputs: Tensor) -> list[Tensor]:
    """Each block's update block(h) - h (N, T, width) on the same stream inputs h."""
    h = inputs.to(next(blocks[0].parameters()).dtype)
    return [block(h) - h for block in blocks]


def off_diagonal_mean(matrix: list[list[float]]) -> float | None:
    """The mean of a square matrix's entries off the diagonal; None for a 1 x 1 one."""
    m = torch.tensor(matrix, dtype=torch.float64)
    if m.shape[0] < 2:
        return None
    off = ~torch.eye(m.shape[0], dtype=torch.bool)
    return float(m[off].nanmean())
