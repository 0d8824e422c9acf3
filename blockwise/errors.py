"""The normalized emulation error: scale-free, so step 30 compares with step 1.

For a field f at layer k and problem b,
    e = ||pred_f - s_k,f|| / ||s_k,f - s_{k-1},f||,
the distance to the teacher's state divided by the teacher's own move, so "do nothing"
(pred = s_{k-1}) scores exactly 1 (README, "Results"). Norms are Frobenius over the field's
non-batch dims. A problem whose field did not move (a converged or frozen problem) has no
defined error: NaN, left out of the summaries.

A leaf module (torch only): training's losses and monitors and evaluation's measurements both
build on it, so neither package imports the other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def normalized_error(pred: Tensor, target: Tensor, prev: Tensor) -> Tensor:
    """(B,) per-problem normalized error of one field; inputs (B, ...) in one frame."""
    flat = lambda t: t.reshape(t.shape[0], -1).double()  # noqa: E731
    move = (flat(target) - flat(prev)).norm(dim=1)
    miss = (flat(pred) - flat(target)).norm(dim=1)
    return torch.where(move > 0, miss / move, torch.full_like(move, float("nan")))


def emulation_error(pred: Tensor, target: Tensor, prev: Tensor) -> Tensor:
    """(B,) normalized error of one field, inf where pred (B, ...) is not finite: a blow-up is
    the worst error, not a missing one."""
    blown = ~pred.isfinite().reshape(pred.shape[0], -1).all(dim=1)
    return normalized_error(pred, target, prev).masked_fill(blown, math.inf)
