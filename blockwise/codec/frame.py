"""Frames: the affine change of coordinates a codec normalizes a state into.

A `Frame` (from `blockwise.problems`) holds centre c (B, n), scale s (B,), f_shift and f_scale
(B,). In the frame a point x is x' = (x - c) / s and a value f is f' = (f - f_shift) / f_scale,
so the objective becomes g(x') = (f(c + s x') - f_shift) / f_scale. A gradient-like vector (a
gradient, a momentum buffer, Adam's m) transforms as the gradient of g, g' = (s / f_scale) g,
and its elementwise square (Adam's v) by the square of that factor. Each codec says where its
centre and scales come from; all of them come from the state being encoded, never the next one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from blockwise.problems import Frame


def identity(batch: int, n: int, like: Tensor) -> Frame:
    """The identity frame, in the dtype and on the device of `like`."""
    zeros = like.new_zeros(batch)
    ones = like.new_ones(batch)
    return Frame(like.new_zeros(batch, n), ones, zeros, ones)


def floor(spread: Tensor, magnitude: Tensor) -> Tensor:
    """A scale from a spread (B,): raised to the float resolution of `magnitude` (B,) and to the
    smallest normal number, so that dividing by it gives neither inf nor NaN when the spread has
    collapsed to rounding noise. A spread above that resolution is returned unchanged."""
    info = torch.finfo(spread.dtype)
    return torch.maximum(spread, (info.eps * magnitude).clamp_min(info.tiny))


def cast(frame: Frame, like: Tensor) -> Frame:
    """The frame in the dtype and on the device of `like`."""
    return Frame(*(t.to(like) for t in (frame.centre, frame.scale, frame.f_shift, frame.f_scale)))


def _per_row(t: Tensor, x: Tensor) -> Tensor:
    """t (B,) reshaped to broadcast against x (B, ...)."""
    return t.reshape((-1,) + (1,) * (x.ndim - 1))


def points_to(frame: Frame, x: Tensor) -> Tensor:
    """Points x (B, ..., n) -> x' = (x - c) / s, same shape."""
    centre = frame.centre.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],))
    return (x - centre) / _per_row(frame.scale, x)


def points_from(frame: Frame, x: Tensor) -> Tensor:
    """Points x' (B, ..., n) in the frame -> x = c + s x', same shape."""
    centre = frame.centre.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],))
    return centre + _per_row(frame.scale, x) * x


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
