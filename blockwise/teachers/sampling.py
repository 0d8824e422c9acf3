"""Deterministic standard-normal draws z (B, lambda, n) for a CMA-ES generation.

Every design is a pure function of (key, generation) per problem, through `blockwise.random`,
so a row gives the same z alone or in any batch, on any device:

  "normal"    independent N(0, I) rows, keyed by fold(key, generation).
  "mirrored"  z_2k = -z_{2k-1} (Brockhoff, Auger, Hansen, Arnold & Hohm, PPSN 2010): the odd
              rows are independent normals; an odd lambda leaves the last row unpaired.
  "sobol"     quasi-random (Teytaud & Gelly, "DCMA", GECCO 2007): the first lambda points of
              the unscrambled Sobol sequence in n dimensions (torch.quasirandom.SobolEngine,
              computed once per (lambda, n)), shifted modulo 1 by one uniform vector per
              (key, generation) (a Cranley-Patterson rotation, so every generation gets a
              fresh, still well spread design), then mapped through Phi^-1. A point that lands
              on exactly 0 is moved to 2^-53 so that Phi^-1 stays finite.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from blockwise import random

SAMPLERS = ("normal", "mirrored", "sobol")


@functools.lru_cache(maxsize=64)
def sobol_points(count: int, n: int) -> Tensor:
    """The first `count` points of the unscrambled n-dimensional Sobol sequence (count, n)."""
    if n > torch.quasirandom.SobolEngine.MAXDIM:
        raise ValueError(
            f"cma_es: the sobol sampler supports n <= {torch.quasirandom.SobolEngine.MAXDIM}, "
            f"got n = {n}"
        )
    return torch.quasirandom.SobolEngine(n, scramble=False).draw(count, dtype=torch.float64)


def standard_normals(
    sampler: str, key: Tensor, generation: Tensor, popsize: int, n: int, dtype: torch.dtype
) -> Tensor:
    """z (B, popsize, n) for problems with keys (B,) int64 at generations (B,) int64."""
    gen_key = random.fold(key, generation)  # (B,)
    if sampler == "normal":
        return random.normal(gen_key, (popsize, n), dtype)
    if sampler == "mirrored":
        half = random.normal(gen_key, ((popsize + 1) // 2, n), dtype)  # (B, ceil(lambda/2), n)
        pairs = torch.stack([half, -half], dim=2)  # (B, ceil(lambda/2), 2, n)
        return pairs.reshape(key.shape[0], -1, n)[:, :popsize]
    if sampler == "sobol":
        points = sobol_points(popsize, n).to(key.device)  # (lambda, n)
        shift = random.uniform(gen_key, (n,))  # (B, n)
        u = torch.remainder(points + shift[:, None, :], 1.0)
        u = torch.where(u > 0, u, 2.0**-53)
        return torch.special.ndtri(u).to(dtype)
    raise ValueError(f"cma_es: unknown sampler {sampler!r}; expected one of {SAMPLERS}")
