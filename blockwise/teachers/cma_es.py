"""CMA-ES as a pure, batched teacher step (Hansen, "The CMA Evolution Strategy: A Tutorial",
arXiv:1604.00772, eqs. (38)-(58); pycma 4.5.0, `cma/evolution_strategy.py` ("es") `tell`).

One step is one generation: sample lambda candidates around the mean, evaluate them, rank them
and update mean, sigma, C and both evolution paths. Static parameters live in `cma_params`,
the deterministic normal draws in `sampling`. Two flavours (see docs teachers.md §3):

"pycma" reproduces pycma 4.5.0's `tell` with options {'CMA_mirrors': 0, 'updatecovwait': 0,
'conditioncov_alleviate': False} for n < 300 (from n = 300 on pycma switches to TPA step-size
control): its parameters, C_0 = diag(exp(1e-4/n * [0..n-1])) (sampler.py L235-238), the
squared-form h_sigma with g = countiter (sigma_adaptation.py L73-95), the active weights'
n / (||C^-1/2 y|| + 1e-9)^2 (sampler.py L310-351) and sigma's exp clipped to [-1, 1]
(sigma_adaptation.py L482-537). Measured against pycma: relative error <= 4e-13 per step.

"tutorial" is eqs. (38)-(58) with these conventions pinned:
  * h_sigma uses G = g, the generation number counted from 1 at the first update (as in
    Hansen's purecmaes.m and pycma; CyberAgent's `cmaes` and evosax use g + 1);
  * E||N(0, I)|| is the approximation sqrt(n)(1 - 1/(4n) + 1/(21n^2));
  * C_0 = I, no epsilon in c_mu or in w°, no clipping of the sigma update;
  * a candidate exactly at the mean (y_i = 0) adds nothing to the active update (0/0 -> 0).

Both flavours: C is symmetrised and eigendecomposed every generation (pycma's default does so
only for n <~ 90); C^1/2 = B D B^T and C^-1/2 = B D^-1 B^T come from that symmetrised C, which
is also the matrix the update starts from. The symmetric square root makes sampling
independent of the eigenvectors' signs and order. A C that is not positive definite yields
NaN, and so does a non-finite f value (pycma would rank inf last and replace NaN by the median),
which `rollout` reports as divergence. Ranking uses a stable sort on f (pycma's
np.argsort is not stable, so compare with pycma only where f has no ties).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import Tensor

from blockwise import random
from blockwise.problems import Objective, evaluate
from blockwise.teachers.base import State, Teacher, check_state, check_x0
from blockwise.teachers.cma_params import FLAVOURS, CMAParams, cma_params
from blockwise.teachers.sampling import SAMPLERS, standard_normals


@dataclasses.dataclass(frozen=True)
class CMAES(Teacher):
    """Covariance matrix adaptation evolution strategy, batched over problems."""

    sigma0: float = 0.5
    """Initial step size sigma_0 > 0 (pycma's `sigma0`)."""
    popsize: int | None = None
    """lambda, candidates per generation (>= 2); None: 4 + floor(3 ln n), eq. (48)."""
    flavour: str = "pycma"
    """"pycma" (pycma 4.5.0's update) or "tutorial" (arXiv:1604.00772); see the module doc."""
    active: bool = True
    """Negative recombination weights for the worse half (active CMA, eq. (53))."""
    sampler: str = "normal"
    """Normal draws: "normal", "mirrored" or "sobol" (see `blockwise.teachers.sampling`)."""
    seed: int = 0
    """Seed of the draws; each problem's key hashes (seed, its x0), see `row_keys`."""

    name: ClassVar[str] = "cma_es"
    state_fields: ClassVar[dict[str, str]] = {
        "mean": "(B, n) distribution mean m",
        "sigma": "(B,) step size",
        "C": "(B, n, n) covariance matrix",
        "p_sigma": "(B, n) conjugate evolution path (step-size control)",
        "p_c": "(B, n) evolution path (rank-one update)",
        "generation": "(B,) int64, updates done so far",
        "key": "(B,) int64, the problem's random key (generation g draws with fold(key, g))",
    }
    extra_fields: ClassVar[dict[str, str]] = {
        "candidates": "(B, lambda, n) the generation's points x_k, in sampling order",
        "fvals": "(B, lambda) f(x_k)",
        "h_sigma": "(B,) bool, whether the rank-one path was updated",
    }

    def __post_init__(self) -> None:
        number = isinstance(self.sigma0, (int, float)) and not isinstance(self.sigma0, bool)
        if not (number and math.isfinite(self.sigma0)):
            raise ValueError(f"cma_es: sigma0 must be a finite number, got {self.sigma0!r}")
        if self.sigma0 <= 0:
            raise ValueError(f"cma_es: sigma0 must be > 0, got {self.sigma0!r}")
        if self.popsize is not None and (
            isinstance(self.popsize, bool) or not isinstance(self.popsize, int) or self.popsize < 2
        ):
            raise ValueError(f"cma_es: popsize must be None or an int >= 2, got {self.popsize!r}")
        if self.flavour not in FLAVOURS:
            raise ValueError(f"cma_es: flavour must be one of {FLAVOURS}, got {self.flavour!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"cma_es: sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not isinstance(self.active, bool):
            raise ValueError(f"cma_es: active must be a bool, got {self.active!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"cma_es: seed must be an int, got {self.seed!r}")

    def params(self, n: int) -> CMAParams:
        """The static parameters for dimension n."""
        return cma_params(n, self.popsize, self.flavour, self.active)

    def init(self, objective: Objective, x0: Tensor) -> State:
        """m = x0 (B, n), sigma = sigma0, C = C_0, zero paths, generation 0."""
        x0 = check_x0(x0, self.name)
        batch, n = x0.shape
        if self.flavour == "pycma":
            diag = torch.exp((1e-4 / n) * torch.arange(n, dtype=torch.float64))
            c0 = torch.diag(diag).to(x0)
        else:
            c0 = torch.eye(n, dtype=x0.dtype, device=x0.device)
        return {
            "mean": x0.clone(),
            "sigma": x0.new_full((batch,), float(self.sigma0)),
            "C": c0.expand(batch, n, n).clone(),
            "p_sigma": torch.zeros_like(x0),
            "p_c": torch.zeros_like(x0),
            "generation": torch.zeros(batch, dtype=torch.int64, device=x0.device),
            "key": row_keys(self.seed, x0),
        }

    def incumbent(self, state: State) -> Tensor:
        """The mean (B, n): CMA-ES's estimate of the optimum."""
        return state["mean"]

    def candidates(self, state: State) -> Tensor:
        """The generation's points x_k (B, lambda, n), exactly as `step` samples them."""
        _check_shapes(check_state(state, self))
        _, basis, d = _decompose(state["C"])
        return self._sample(state, basis, d)

    def step(
        self, objective: Objective, state: State, candidates: Tensor | None = None
    ) -> tuple[State, dict[str, Tensor]]:
        """One generation. `candidates` (B, lambda, n), if given, replace the sampled points."""
        _check_shapes(check_state(state, self))
        mean = state["mean"]
        batch, n = mean.shape
        p = self.params(n)
        C, basis, d = _decompose(state["C"])
        inv_sqrt = (basis / d[:, None, :]) @ basis.mT  # C^-1/2 = B D^-1 B^T
        if candidates is None:
            x = self._sample(state, basis, d)
        else:
            x = _check_candidates(candidates, batch, p.popsize, n).to(mean)
        f = evaluate(objective, x)
        new, h_sigma = self._update(p, state, C, inv_sqrt, x, f)
        # pycma would replace NaN by the median f and rank inf last; a trajectory should
        # rather stop there, so a problem with a non-finite f gets a NaN state, which
        # `rollout` reports as divergence.
        bad = ~torch.isfinite(f).all(-1)  # (B,)
        for name, value in new.items():
            if value.is_floating_point():
                mask = bad.reshape((-1,) + (1,) * (value.ndim - 1))
                new[name] = value.masked_fill(mask, float("nan"))
        return new, {"candidates": x, "fvals": f, "h_sigma": h_sigma}

    def _sample(self, state: State, basis: Tensor, d: Tensor) -> Tensor:
        """Eqs. (38)-(40): x_k = m + sigma C^1/2 z_k (B, lambda, n), from C's eigenbasis."""
        mean = state["mean"]
        n = mean.shape[1]
        z = standard_normals(
            self.sampler, state["key"], state["generation"], self.params(n).popsize, n, mean.dtype
        )
        y = z @ ((basis * d[:, None, :]) @ basis.mT)  # eq. (39), C^1/2 is symmetric
        return mean[:, None, :] + state["sigma"][:, None, None] * y  # eq. (40)

    def _update(
        self, p: CMAParams, state: State, C: Tensor, inv_sqrt: Tensor, x: Tensor, f: Tensor
    ) -> tuple[State, Tensor]:
        """Eqs. (41)-(47) and (44) from points x (B, lambda, n) and values f (B, lambda)."""
        mean, sigma = state["mean"], state["sigma"]
        n = mean.shape[1]
        pycma = self.flavour == "pycma"
        w = torch.tensor(p.weights, dtype=mean.dtype, device=mean.device)  # (lambda,)
        order = torch.argsort(f, dim=-1, stable=True)
        x_sorted = torch.take_along_dim(x, order[..., None], dim=1)  # x_{i:lambda}
        y = (x_sorted - mean[:, None, :]) / sigma[:, None, None]  # y_{i:lambda} (B, lambda, n)

        # eqs. (41)-(42) with c_m = 1, from x as pycma does (es L2810)
        new_mean = torch.einsum("i,bin->bn", w[: p.mu], x_sorted[:, : p.mu])
        shift = (new_mean - mean) / sigma[:, None]  # <y>_w (B, n)

        # eq. (43); pycma sigma_adaptation.py L56-72 with es `isotropic_mean_shift` L3912-3933
        white = (inv_sqrt @ shift[..., None]).squeeze(-1)  # C^-1/2 <y>_w
        p_sigma = (1 - p.cs) * state["p_sigma"] + math.sqrt(p.cs * (2 - p.cs) * p.mueff) * white

        # h_sigma (tutorial p. 28 / pycma sigma_adaptation.py L73-95), g = 1 at the first update
        g = (state["generation"] + 1).to(mean.dtype)
        norm2 = (p_sigma**2).sum(-1)
        unbias = 1 - (1 - p.cs) ** (2 * g)
        if pycma:
            h_sigma = norm2 / unbias / n - 1 < 1 + 4.0 / (n + 1)
        else:
            h_sigma = (norm2 / unbias).sqrt() < (1.4 + 2 / (n + 1)) * p.chi_n
        h = h_sigma.to(mean.dtype)

        # eq. (45); es L2881-2883
        coef_c = math.sqrt(p.cc * (2 - p.cc) * p.mueff)
        p_c = (1 - p.cc) * state["p_c"] + (h * coef_c)[:, None] * shift

        # eq. (46): negative weights rescaled by n / ||C^-1/2 y_i||^2 (pycma adds 1e-9 to the
        # norm, sampler.py L330-338)
        mahal2 = ((y @ inv_sqrt) ** 2).sum(-1)  # (B, lambda), inv_sqrt is symmetric
        if pycma:
            rescale = n / (mahal2.sqrt() + 1e-9) ** 2
        else:
            rescale = torch.where(mahal2 > 0, n / mahal2, 0.0)
        w_circ = torch.where(w < 0, w * rescale, w)  # (B, lambda)

        # eq. (47); pycma es L2879, L2914-2976: c1a = c1 (1 - (1 - h) c_c (2 - c_c))
        c1a = p.c1 * (1 - (1 - h) * p.cc * (2 - p.cc))  # (B,)
        decay = 1 - c1a - p.cmu * sum(p.weights)
        rank_mu = (y.mT * w_circ[:, None, :]) @ y  # sum_i w°_i y_i y_i^T (B, n, n)
        rank_one = p_c[:, :, None] * p_c[:, None, :]
        new_C = decay[:, None, None] * C + p.c1 * rank_one + p.cmu * rank_mu
        new_C = (new_C + new_C.mT) / 2  # so that the state is exactly symmetric

        # eq. (44); pycma clips the exponent to [-1, 1] (sigma_adaptation.py L520-537)
        log_step = (p_sigma.norm(dim=-1) / p.chi_n - 1) * (p.cs / p.damps)
        if pycma:
            log_step = log_step.clamp(-1.0, 1.0)
        new = {
            "mean": new_mean,
            "sigma": sigma * torch.exp(log_step),
            "C": new_C,
            "p_sigma": p_sigma,
            "p_c": p_c,
            "generation": state["generation"] + 1,
            "key": state["key"],
        }
        return new, h_sigma


_EIGH_CHUNK = 16384


def _decompose(C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The symmetrised C (B, n, n), its eigenvectors (B, n, n) and sqrt eigenvalues D (B, n)."""
    C = (C + C.mT) / 2  # pycma symmetrises at each decomposition
    # cuSOLVER's batched eigh fails past about 32k matrices (CUSOLVER_STATUS_INTERNAL_ERROR,
    # seen on an H100 at B = 65536); the matrices are independent, so chunks change nothing.
    parts = [torch.linalg.eigh(chunk) for chunk in C.split(_EIGH_CHUNK)]
    evals = torch.cat([p.eigenvalues for p in parts])
    basis = torch.cat([p.eigenvectors for p in parts])
    return C, basis, evals.sqrt()  # D is NaN if C is not positive definite


def row_keys(seed: int, x0: Tensor) -> Tensor:
    """Keys (B,) hashing the seed and the bits of each row of x0 (B, n) rounded to float32.

    A problem's draws then depend on its own (seed, x0) only, not on its position in the batch,
    so a row rolled out alone equals the same row in any batch, as the Teacher contract asks
    (a trajectory is a function of settings, objective and x0). Rounding to float32 first
    gives a float32 run the draws of the float64 run it approximates. Problems whose x0 agree
    to float32 precision share their draws unless their seeds differ.
    """
    bits = (x0.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)  # + 0.0: -0.0 -> 0.0
    key = random.key(seed, x0.device).expand(x0.shape[0])
    for j in range(x0.shape[1]):
        key = random.fold(key, bits[:, j])
    return key


def _check_shapes(state: State) -> None:
    """Raise ValueError unless the state's fields have consistent (B, ...) shapes and dtypes."""
    mean = state["mean"]
    if not isinstance(mean, Tensor) or mean.ndim != 2 or not mean.is_floating_point():
        raise ValueError(f"cma_es: state['mean'] must be a floating tensor (B, n), got {mean!r}")
    batch, n = mean.shape
    expected = {
        "sigma": (batch,), "C": (batch, n, n), "p_sigma": (batch, n), "p_c": (batch, n),
        "generation": (batch,), "key": (batch,),
    }
    for name, shape in expected.items():
        value = state[name]
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"cma_es: state[{name!r}] must have shape {shape}, got {got}")
        integer = name in ("generation", "key")
        if (value.dtype == torch.int64) != integer or (not integer and value.dtype != mean.dtype):
            want = "int64" if integer else str(mean.dtype)
            raise ValueError(f"cma_es: state[{name!r}] must be {want}, got {value.dtype}")


def _check_candidates(candidates: Tensor, batch: int, popsize: int, n: int) -> Tensor:
    """Raise unless `candidates` is a floating tensor (B, lambda, n)."""
    if not isinstance(candidates, Tensor) or not candidates.is_floating_point():
        raise TypeError(
            f"cma_es: candidates must be a floating tensor, got {type(candidates).__name__}"
        )
    if tuple(candidates.shape) != (batch, popsize, n):
        raise ValueError(
            f"cma_es: candidates must have shape (B, lambda, n) = {(batch, popsize, n)}, "
            f"got {tuple(candidates.shape)}"
        )
    return candidates
