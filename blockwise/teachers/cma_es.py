"""CMA-ES as a pure, batched teacher step (Hansen, "The CMA Evolution Strategy: A Tutorial",
arXiv:1604.00772, eqs. (38)-(58); pycma 4.5.0, `cma/evolution_strategy.py` ("es") `tell`).

One step is one generation: sample lambda candidates around the mean, evaluate them, rank them
and update mean, sigma, C and both evolution paths. Static parameters live in `cma_params`,
the deterministic normal draws in `sampling`. Two flavours:

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
which `rollout` reports as divergence. So does a C that is not finite or that LAPACK cannot
decompose, in its own row only: one bad row never stops the batch (`_eigh_rows`).
Ranking uses a stable sort on f (pycma's np.argsort is not stable, so compare with pycma only
where f has no ties).

C^1/2 and C^-1/2 are differentiable in C with a gradient that stays finite at repeated
eigenvalues (`_SymmetricRoot`): fine-tuning backpropagates through the candidates sampled from
an emulated C, which starts next to C_0, whose eigenvalues are (nearly) equal, and which may
leave the positive definite cone (`candidates(..., project=True)`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from blockwise import random
from blockwise.problems import Objective, evaluate
from blockwise.teachers.base import State, Teacher, check_state, check_x0
from blockwise.teachers.cma_params import FLAVOURS, CMAParams, cma_params
from blockwise.teachers.sampling import SAMPLERS, standard_normals

MAX_POPSIZE = 65536  # candidates per generation; validation samples one generation


@dataclasses.dataclass(frozen=True)
class CMAES(Teacher):
    """Covariance matrix adaptation evolution strategy, batched over problems."""

    spread = ("sigma", "C")  # drawn as the 1-sigma ellipse of N(mean, sigma^2 C)

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
        if self.popsize is not None and self.popsize > MAX_POPSIZE:
            raise ValueError(
                f"cma_es: popsize must be at most {MAX_POPSIZE} (validation samples a generation), "
                f"got {self.popsize}"
            )
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

    def candidates(self, state: State, project: bool = False) -> Tensor:
        """The generation's points x_k (B, lambda, n), exactly as `step` samples them.

        project: sample from the nearest positive semi-definite matrix to C (its negative
        eigenvalues set to 0; Higham, "Computing a nearest symmetric positive semidefinite
        matrix", 1988) instead of giving NaN where C is not positive definite. For a C that a
        network emulated: a teacher's C is positive definite, and its points stay the same.
        """
        return self.sample(state, self.root(state, project))

    def root(self, state: State, project: bool = False) -> Tensor:
        """C^1/2 (B, n, n), the symmetric root `step` samples with (NaN rows where C is not
        positive definite, or, with `project`, the root of its nearest positive semi-definite
        matrix, as `candidates`); differentiable in C, with a finite gradient at repeated
        eigenvalues."""
        _check_shapes(check_state(state, self))
        return _SymmetricRoot.apply(*_decompose(state["C"]), False, project)

    def step(
        self, objective: Objective, state: State, candidates: Tensor | None = None
    ) -> tuple[State, dict[str, Tensor]]:
        """One generation. `candidates` (B, lambda, n), if given, replace the sampled points."""
        _check_shapes(check_state(state, self))
        mean = state["mean"]
        batch, n = mean.shape
        p = self.params(n)
        C, basis, values = _decompose(state["C"])
        inv_sqrt = _SymmetricRoot.apply(C, basis, values, True, False)
        if candidates is None:
            x = self.sample(state, _SymmetricRoot.apply(C, basis, values, False, False))
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

    def sample(self, state: State, sqrt_C: Tensor) -> Tensor:
        """Eqs. (38)-(40): x_k = m + sigma C^1/2 z_k (B, lambda, n), from C^1/2 (B, n, n)."""
        mean = state["mean"]
        n = mean.shape[1]
        z = standard_normals(
            self.sampler, state["key"], state["generation"], self.params(n).popsize, n, mean.dtype
        )
        y = z @ sqrt_C  # eq. (39), C^1/2 is symmetric
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
    """The symmetrised C (B, n, n), its eigenvectors (B, n, n) and eigenvalues (B, n).

    The eigenvectors and eigenvalues carry no gradient: `_SymmetricRoot` takes C's from them.
    """
    C = (C + C.mT) / 2  # pycma symmetrises at each decomposition
    values, basis = _eigh_rows(C.detach())
    return C, basis, values


def _eigh_rows(C: Tensor) -> tuple[Tensor, Tensor]:
    """torch.linalg.eigh of each symmetric row of C (B, n, n): eigenvalues (B, n), eigenvectors
    (B, n, n); a row that is not finite, or that LAPACK fails to decompose, gets NaNs.

    A batched eigh raises for the whole batch when one matrix fails (a NaN or inf matrix fails
    to converge from n = 3 on). Its matrices are decomposed independently, so putting the
    identity in a non-finite row's place leaves every other row's result bit for bit as it was.
    """
    finite = torch.isfinite(C).flatten(1).all(-1)
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    # cuSOLVER's batched eigh fails past about 32k matrices (CUSOLVER_STATUS_INTERNAL_ERROR,
    # seen on an H100 at B = 65536); the matrices are independent, so chunks change nothing.
    chunks = torch.where(finite[:, None, None], C, eye).split(_EIGH_CHUNK)
    values, vectors = zip(*(_eigh_or_rows(chunk) for chunk in chunks), strict=True)
    bad = ~finite
    return (
        torch.cat(values).masked_fill(bad[:, None], math.nan),
        torch.cat(vectors).masked_fill(bad[:, None, None], math.nan),
    )


def _eigh_or_rows(C: Tensor) -> tuple[Tensor, Tensor]:
    """eigh of a batch (B, n, n); if it fails, of each row alone, a failing row giving NaNs.

    A finite matrix fails only with entries near overflow (LAPACK's scaling overflows): rare
    enough that the row-by-row retry costs nothing in practice.
    """
    try:
        return tuple(torch.linalg.eigh(C))
    except torch.linalg.LinAlgError:
        rows = [_eigh_or_nan(row[None]) for row in C]
        return torch.cat([v for v, _ in rows]), torch.cat([b for _, b in rows])


def _eigh_or_nan(C: Tensor) -> tuple[Tensor, Tensor]:
    try:
        return tuple(torch.linalg.eigh(C))
    except torch.linalg.LinAlgError:
        return C.new_full(C.shape[:-1], math.nan), torch.full_like(C, math.nan)


class _SymmetricRoot(torch.autograd.Function):
    """C^1/2 = B D B^T, or C^-1/2 = B D^-1 B^T, from C's eigenvectors B and eigenvalues L, with
    D = sqrt(L) (NaN where C is not positive definite) or, with `psd`, D = sqrt(max(L, 0)).

    torch.linalg.eigh's own backward divides by eigenvalue differences, so at C = I (repeated
    eigenvalues) it gives NaN and near it huge, wrong gradients, although C^+-1/2 is smooth
    there. The gradient of a spectral function f(C) = B f(L) B^T (Daleckii-Krein) is
    B ((B^T G B) o K) B^T with the divided differences K of `_divided_differences`, which
    need no difference of close eigenvalues. The forward is the plain product, so values are
    unchanged.
    """

    @staticmethod
    def forward(ctx, C: Tensor, basis: Tensor, values: Tensor, inverse: bool, psd: bool) -> Tensor:
        d = (values.clamp(min=0) if psd else values).sqrt()
        ctx.save_for_backward(basis, values, d)
        ctx.inverse = inverse
        scaled = basis / d[:, None, :] if inverse else basis * d[:, None, :]
        return scaled @ basis.mT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        basis, values, d = ctx.saved_tensors
        kernel = _divided_differences(values, d, ctx.inverse)
        return basis @ ((basis.mT @ grad @ basis) * kernel) @ basis.mT, None, None, None, None


def _divided_differences(values: Tensor, d: Tensor, inverse: bool) -> Tensor:
    """K_ij = (f(l_i) - f(l_j)) / (l_i - l_j), K_ii = f'(l_i) (B, n, n), for f(l) = 1 / d or d,
    d = sqrt(max(l, 0)), from eigenvalues l and d (B, n).

    Between positive eigenvalues the difference cancels: K_ij = 1 / (d_i + d_j) for d (the
    Sylvester equation C^1/2 dS + dS C^1/2 = dC) and -1 / (d_i d_j (d_i + d_j)) for 1 / d: exact
    and finite wherever C is positive definite. Between a clamped eigenvalue (<= 0) and a
    positive one, l_i - l_j is at least the positive one, so the quotient is safe; between two
    clamped ones f is constant: K = 0.
    """
    d_i, d_j = d[:, :, None], d[:, None, :]
    if inverse:
        return -1 / (d_i * d_j * (d_i + d_j))
    l_i, l_j = values[:, :, None], values[:, None, :]
    positive = (l_i > 0) & (l_j > 0)
    apart = torch.where(positive | (d_i == d_j), 1.0, l_i - l_j)
    return torch.where(positive, 1 / (d_i + d_j), (d_i - d_j) / apart)


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
