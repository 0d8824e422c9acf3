"""Frames: the affine change of coordinates a codec normalizes a state into.

A `Frame` (from `blockwise.problems`) holds centre c (B, n), scale s (B,), f_shift and f_scale
(B,), and in an affine frame an edge matrix E (B, n, n). In the frame a point x is
x' = L^-1 (x - c), with L = s I or L = E, and a value f is f' = (f - f_shift) / f_scale, so the
objective becomes g(x') = (f(c + L x') - f_shift) / f_scale. A gradient-like vector (a
gradient, a momentum buffer, Adam's m) transforms as the gradient of g, g' = (s / f_scale) g,
and its elementwise square (Adam's v) by the square of that factor (scale frames only: the
codecs with such fields refuse the affine frame). Each codec says where its centre and scales
come from; all of them come from the state being encoded, never the next one.

Kinds (`make_codec`'s `frame`): "none" (the identity), "scale" (translation and scale) and
"affine" (the simplex codecs: the current simplex becomes the standard simplex; CMA-ES: its
distribution becomes N(0, I)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from blockwise.problems import Frame

KINDS = ("none", "scale", "affine")

MAX_CONDITION = 1e4
"""cond(E) from which an affine frame is refused for a row: 0.1-0.3% of Nelder–Mead simplices
on rotated quadratics reach it, where a step of E^-1 would amplify rounding by as much (for
CMA-ES, E = sigma C^1/2, so cond(C) >= 1e8)."""


def identity(batch: int, n: int, like: Tensor) -> Frame:
    """The identity frame, in the dtype and on the device of `like`."""
    zeros = like.new_zeros(batch)
    ones = like.new_ones(batch)
    return Frame(like.new_zeros(batch, n), ones, zeros, ones)


def guarded_edges(edges: Tensor, scale: Tensor) -> Tensor:
    """The edge matrices E (B, n, n) of an affine frame, with each row that is degenerate
    (cond(E) >= MAX_CONDITION, singular or not finite) replaced by scale I (scale (B,)): that
    row falls back to the translation-and-scale frame, so it is still encoded and scored (its
    inputs are not the standard simplex, or N(0, I), so a block trained in the affine frame may
    err there).
    """
    finite = torch.isfinite(edges).all(dim=(1, 2))
    eye = torch.eye(edges.shape[-1], dtype=edges.dtype, device=edges.device)
    # One batched SVD fails for the whole batch on a non-finite row: give those rows I.
    safe = torch.where(finite[:, None, None], edges, eye)
    sv = torch.linalg.svdvals(safe)  # (B, n), descending
    ok = finite & (sv[:, -1] * MAX_CONDITION > sv[:, 0])
    return torch.where(ok[:, None, None], edges, scale[:, None, None] * eye)


def floor(spread: Tensor, magnitude: Tensor) -> Tensor:
    """A scale from a spread (B,): raised to the float resolution of `magnitude` (B,) and to the
    smallest normal number, so that dividing by it gives neither inf nor NaN when the spread has
    collapsed to rounding noise. A spread above that resolution is returned unchanged."""
    info = torch.finfo(spread.dtype)
    return torch.maximum(spread, (info.eps * magnitude).clamp_min(info.tiny))


def cast(frame: Frame, like: Tensor) -> Frame:
    """The frame in the dtype and on the device of `like`."""
    fields = (frame.centre, frame.scale, frame.f_shift, frame.f_scale, frame.edges)
    return Frame(*(None if t is None else t.to(like) for t in fields))


def _per_row(t: Tensor, x: Tensor) -> Tensor:
    """t (B,) reshaped to broadcast against x (B, ...)."""
    return t.reshape((-1,) + (1,) * (x.ndim - 1))


def points_to(frame: Frame, x: Tensor) -> Tensor:
    """Points x (B, ..., n) -> x' = L^-1 (x - c), same shape."""
    return frame.points_to(x)


def points_from(frame: Frame, x: Tensor) -> Tensor:
    """Points x' (B, ..., n) in the frame -> x = c + L x', same shape."""
    return frame.points_from(x)


def values_to(frame: Frame, f: Tensor) -> Tensor:
    """Values f (B, ...) -> f' = (f - f_shift) / f_scale."""
    return (f - _per_row(frame.f_shift, f)) / _per_row(frame.f_scale, f)


def values_from(frame: Frame, f: Tensor) -> Tensor:
    """Values f' (B, ...) in the frame -> f = f_shift + f_scale f'."""
    return _per_row(frame.f_shift, f) + _per_row(frame.f_scale, f) * f


def gradient_factor(frame: Frame, x: Tensor, power: int = 1) -> Tensor:
    """(s / f_scale)^power (B,), shaped to multiply x (B, ...): gradient-like vectors into the
    frame (power 1, or 2 for squared gradients); divide by it to leave the frame."""
    return _per_row((frame.scale / frame.f_scale) ** power, x)
