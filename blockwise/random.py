"""Counter-based random numbers: every draw is a pure function of (key, counter).

Teachers and problem families must not carry hidden generator state: the same key gives the
same numbers on any device, in any batch composition, in any order of calls. Keys are int64
tensors; `fold` derives sub-keys (one per problem, per generation, per purpose), and
`uniform` / `normal` hash (key, element index) into numbers.

The hash is splitmix64's finalizer (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014), computed in int64 with wrapping multiplication, which torch does
identically on CPU and GPU. Numbers are made in float64 and cast, so a float32 draw is the
rounding of the float64 draw.
"""

from __future__ import annotations

import torch
from torch import Tensor

_M64 = 1 << 64


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - _M64 if c >= 1 << 63 else c


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_MUL1 = _i64(0xBF58476D1CE4E5B9)
_MUL2 = _i64(0x94D049BB133111EB)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: Tensor) -> Tensor:
    z = (z ^ _shr(z, 30)) * _MUL1
    z = (z ^ _shr(z, 27)) * _MUL2
    return z ^ _shr(z, 31)


def key(seed: int | Tensor, device: torch.device | str | None = None) -> Tensor:
    """An int64 key tensor from a Python seed (or a tensor of seeds)."""
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    return _mix(seed + _GOLDEN)


def fold(key: Tensor, data: int | Tensor) -> Tensor:
    """Sub-key of `key` for `data` (broadcast together): distinct data give independent keys."""
    data = torch.as_tensor(data, dtype=torch.int64, device=key.device)
    return _mix(key ^ _mix(data * _GOLDEN + _MUL1))


def bits(key: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Random int64 words of shape key.shape + shape: word i is hash(key, i)."""
    count = 1
    for s in shape:
        count *= s
    counter = torch.arange(count, dtype=torch.int64, device=key.device).reshape(shape)
    return fold(key.reshape(key.shape + (1,) * len(shape)), counter)


def uniform(key: Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
    """Uniform numbers in the open interval (0, 1), shape key.shape + shape.

    The top 52 bits of each word give (k + 0.5) / 2**52, exact in float64, so 0 and 1 never
    occur (with 53 bits the largest k + 0.5 would round up to 2**53 and give u = 1).
    """
    k = _shr(bits(key, shape), 12).to(torch.float64)
    return ((k + 0.5) * 2.0**-52).to(dtype)


def normal(key: Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
    """Standard normal numbers by inversion, Phi^-1(U), shape key.shape + shape."""
    return torch.special.ndtri(uniform(key, shape)).to(dtype)
