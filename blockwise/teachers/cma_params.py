"""CMA-ES static parameters: recombination weights and learning rates, two flavours.

"tutorial": Hansen, "The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772, eqs. (48)-(58)
(Table 1), with the expectation of ||N(0, I)|| approximated as sqrt(n)(1 - 1/(4n) + 1/(21n^2)).

"pycma": the values pycma 4.5.0 uses in `tell` with default options. Pointers into its `cma/`
package:
  weights                     recombination_weights.py L147-193, negative part L273-326
  c_c                         options_parameters.py L982
  c_1 (with min(1, lambda/6)) interfaces.py L330
  c_mu (with +0.25)           interfaces.py L334-338
  c_sigma (+3, cap 0.5)       sigma_adaptation.py L394-423
  d_sigma                     sigma_adaptation.py L363-393, constants L229-249
  chi_N                       utilities/math.py L839-880
All values are computed in Python floats, in pycma's order of operations where it matters, so
that they agree with pycma's to about 1e-16.
"""

from __future__ import annotations

import dataclasses
import functools
import math

FLAVOURS = ("pycma", "tutorial")


@dataclasses.dataclass(frozen=True)
class CMAParams:
    """Static parameters of one (n, lambda) CMA-ES.

    Attributes:
        n: dimension.
        popsize: lambda, candidates per generation.
        mu: number of positive weights (parents), floor(lambda / 2).
        weights: (lambda,) w_1 >= ... >= w_lambda; the positive ones sum to 1, the negative
            ones (zero without active CMA) are scaled as in eq. (53).
        mueff: variance effective selection mass of the positive weights.
        cc, c1, cmu: covariance learning rates: p_c decay, rank-one, rank-mu.
        cs, damps: step-size path decay c_sigma and damping d_sigma.
        chi_n: E||N(0, I_n)||, exact or approximated (see the module docstring).
    """

    n: int
    popsize: int
    mu: int
    weights: tuple[float, ...]
    mueff: float
    cc: float
    c1: float
    cmu: float
    cs: float
    damps: float
    chi_n: float


def default_popsize(n: int) -> int:
    """lambda = 4 + floor(3 ln n), eq. (48); pycma's `int(4 + 3 * log(N))` is the same."""
    return int(4 + 3 * math.log(n))


def exact_chi(n: int) -> float:
    """E||N(0, I_n)|| = sqrt(2) Gamma((n+1)/2) / Gamma(n/2), by the two-step recurrence.

    chi_{n+2} = chi_n (n+1)/n needs no Gamma function and stays within 1e-15 of pycma's
    tabulated values for n <= 100 (lgamma and exp lose about 4e-14 at n = 100).
    """
    chi = math.sqrt(2 / math.pi) if n % 2 else math.sqrt(math.pi / 2)
    for k in range(2 - n % 2, n - 1, 2):
        chi = chi * (k + 1) / k
    return chi


def pycma_chi(n: int) -> float:
    """pycma's `Mh.chiN`: exact up to n = 100, sqrt(n)(1 - 1/(4n) + 1/(32n^2)) above."""
    return exact_chi(n) if n <= 100 else n**0.5 * (1 - 1.0 / (4 * n) + 1.0 / (32 * n**2))


def _raw_weights(popsize: int) -> tuple[list[float], int, float, float]:
    """w'_i = ln((lambda+1)/2) - ln i, eq. (49), normalised as pycma does.

    Returns (weights, mu, mueff, mueff_minus): positive part summing to 1, negative part
    summing to -1 (a middle weight of exactly 0, odd lambda, counts as negative with value 0).
    """
    raw = [math.log((popsize + 1) / 2.0) - math.log(i) for i in range(1, popsize + 1)]
    mu = sum(w > 0 for w in raw)
    spos = sum(raw[:mu])
    weights = [w / spos for w in raw]
    mueff = 1 / sum(w**2 for w in weights[:mu])
    sneg = sum(weights[mu:])
    weights[mu:] = [w / -sneg for w in weights[mu:]]
    mueff_minus = sum(weights[mu:]) ** 2 / sum(w**2 for w in weights[mu:])
    return weights, mu, mueff, mueff_minus


def _finalize_negative(
    weights: list[float], mu: int, limits: list[float], active: bool
) -> tuple[float, ...]:
    """Scale the negative weights (summing to -1) to sum to -min(limits), eq. (53); or zero them."""
    scale = min(limits) if active else 0.0
    return tuple(weights[:mu] + [w * scale for w in weights[mu:]])


def pycma_params(n: int, popsize: int, active: bool) -> CMAParams:
    """pycma 4.5.0's parameters (CMA_mirrors = 0, CSA step-size control)."""
    weights, mu, mueff, mueff_minus = _raw_weights(popsize)
    cc = (4.0 + mueff / n) / (n + (4.0 + 2 * mueff / n))
    c1 = min(1, popsize / 6) * 2 / ((n + 1.3) ** 2.0 + mueff)
    cmu = min(1 - c1, 2 * (0.25 + mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + 2 * mueff / 2))
    # recombination_weights.py L306-320: zero decay, positive definiteness, mueff limit.
    limits = [1 + c1 / cmu, (1 - c1 - cmu) / cmu / n, 1 + 2 * mueff_minus / (mueff + 2)]
    cs = min(0.5, (mueff + 2) / (n + (mueff + 3)))
    # With no mirrors pycma's 0.5 + min(1, (0/(0.159 lambda) - 1)^2)/2 is exactly 1.
    damp_in = max(1, 3 * (1 - 0.5 ** (n / 9)))
    damps = 1.0 + 2 * max(0, damp_in * ((mueff - 1) / (n + 1)) ** 0.5 - 1) + cs
    return CMAParams(
        n, popsize, mu, _finalize_negative(weights, mu, limits, active),
        mueff, cc, c1, cmu, cs, damps, pycma_chi(n),
    )


def tutorial_params(n: int, popsize: int, active: bool) -> CMAParams:
    """The tutorial's Table 1 (arXiv:1604.00772 eqs. (48)-(58)), alpha_cov = 2, c_m = 1."""
    weights, mu, mueff, mueff_minus = _raw_weights(popsize)
    cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)  # eq. (56)
    c1 = 2 / ((n + 1.3) ** 2 + mueff)  # eq. (57)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))  # eq. (58)
    # eqs. (50)-(52); with mu = 1 c_mu is 0 and the negative weights never act, so the two
    # limits that divide by c_mu are taken as +inf.
    limits = [1 + 2 * mueff_minus / (mueff + 2)]
    if cmu > 0:
        limits += [1 + c1 / cmu, (1 - c1 - cmu) / (n * cmu)]
    cs = (mueff + 2) / (n + mueff + 5)  # eq. (55)
    damps = 1 + 2 * max(0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs  # eq. (55)
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))
    return CMAParams(
        n, popsize, mu, _finalize_negative(weights, mu, limits, active),
        mueff, cc, c1, cmu, cs, damps, chi_n,
    )


@functools.lru_cache(maxsize=256)
def cma_params(n: int, popsize: int | None, flavour: str, active: bool) -> CMAParams:
    """The parameters of `flavour` for dimension n and popsize (None: the default lambda)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"cma_es: unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    lam = default_popsize(n) if popsize is None else popsize
    return (pycma_params if flavour == "pycma" else tutorial_params)(n, lam, active)
