"""pycma 4.5.0 as a step-by-step reference for the cma_es teacher (docs teachers.md §3.4, §3.6).

One `cma.CMAEvolutionStrategy` per problem row, made deterministic and kept on the plain CMA-ES
path (no mirrors, no covariance alleviation, an eigendecomposition at every ask, no
termination). `snapshot` reads the state in the teacher's field layout.
"""

from __future__ import annotations

import cma
import numpy as np
import torch


def make_es(x0: np.ndarray, sigma0: float, seed: int, popsize: int | None, active: bool):
    """A pycma ES on the cross-check options of teachers.md §3.4."""
    opts = {
        "seed": seed, "CMA_mirrors": 0, "conditioncov_alleviate": False, "updatecovwait": 0,
        "verbose": -9, "CMA_active": active,
        "tolx": 0, "tolfun": 0, "tolfunhist": 0, "tolflatfitness": 10**9,
        "tolstagnation": 10**9, "maxiter": 10**9, "tolxstagnation": False,
    }
    if popsize is not None:
        opts["popsize"] = popsize
    return cma.CMAEvolutionStrategy(x0, sigma0, opts)


def snapshot(es) -> dict[str, np.ndarray]:
    """es's state as the teacher names it (take it after `ask`, which symmetrises C)."""
    return {
        "mean": np.array(es.mean, dtype=float),
        "sigma": np.array(es.sigma, dtype=float),
        "C": np.array(es.sm.C, dtype=float),
        "p_sigma": np.array(es.adapt_sigma.ps, dtype=float),
        "p_c": np.array(es.pc, dtype=float),
        "generation": np.array(es.countiter, dtype=np.int64),
    }


def stack(snaps: list[dict[str, np.ndarray]], key: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batched teacher state from per-row snapshots; `key` (B,) only matters for sampling."""
    state = {name: torch.from_numpy(np.stack([s[name] for s in snaps])) for name in snaps[0]}
    state["key"] = key
    return state


def last_hsig(es) -> bool:
    """The h_sigma pycma used in the last tell (its path was already updated, so this only
    re-evaluates sigma_adaptation.py L73-95 on the current p_sigma and countiter)."""
    return bool(es.adapt_sigma.hsig(es))
