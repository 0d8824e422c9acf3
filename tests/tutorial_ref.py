"""A float64 numpy CMA-ES written from Hansen's tutorial (arXiv:1604.00772, eqs. (38)-(58)).

An independent reference for the teacher's "tutorial" flavour: one problem at a time, plain
loops where the teacher is batched, numpy where it uses torch, the raw weights normalised in a
different order. Conventions as pinned in blockwise.teachers.cma_es: h_sigma with G = g (1 at
the first update), E||N(0,I)|| ~ sqrt(n)(1 - 1/(4n) + 1/(21 n^2)), no epsilons, no clipping.
"""

from __future__ import annotations

import math

import numpy as np


def params(n: int, lam: int, active: bool) -> dict:
    """Table 1 of the tutorial."""
    mu = lam // 2
    raw = np.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))  # eq. (49)
    pos, neg = raw[raw > 0], raw[raw < 0]
    mueff = pos.sum() ** 2 / (pos**2).sum()
    mueff_neg = neg.sum() ** 2 / (neg**2).sum()
    c1 = 2 / ((n + 1.3) ** 2 + mueff)  # eq. (57)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + 2 * mueff / 2))  # eq. (58)
    alpha_mu = 1 + c1 / cmu if cmu > 0 else math.inf  # eq. (50)
    alpha_mueff = 1 + 2 * mueff_neg / (mueff + 2)  # eq. (51)
    alpha_posdef = (1 - c1 - cmu) / (n * cmu) if cmu > 0 else math.inf  # eq. (52)
    neg_scale = min(alpha_mu, alpha_mueff, alpha_posdef) if active else 0.0
    weights = np.where(raw >= 0, raw / pos.sum(), neg_scale * raw / np.abs(neg).sum())  # (53)
    cs = (mueff + 2) / (n + mueff + 5)
    return {
        "n": n, "lam": lam, "mu": mu, "weights": weights, "mueff": mueff,
        "cc": (4 + mueff / n) / (n + 4 + 2 * mueff / n),  # eq. (56)
        "c1": c1, "cmu": cmu, "cs": cs,
        "damps": 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs,  # eq. (55)
        "chi_n": math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n)),
    }


def tell(p: dict, state: dict, x: np.ndarray, f: np.ndarray) -> tuple[dict, bool]:
    """One update from candidates x (lambda, n) with values f (lambda,); returns (state, h)."""
    n, w = p["n"], p["weights"]
    m, sigma, g = state["mean"], float(state["sigma"]), int(state["generation"]) + 1
    C = (state["C"] + state["C"].T) / 2
    eigvals, B = np.linalg.eigh(C)
    C_inv_half = B @ np.diag(eigvals**-0.5) @ B.T
    ys = (x[np.argsort(f, kind="stable")] - m) / sigma  # y_{i:lambda}
    y_w = sum(w[i] * ys[i] for i in range(p["mu"]))  # eq. (41)
    mean = m + sigma * y_w  # eq. (42), c_m = 1
    cs, cc, c1, cmu = p["cs"], p["cc"], p["c1"], p["cmu"]
    ps = (1 - cs) * state["p_sigma"] + math.sqrt(cs * (2 - cs) * p["mueff"]) * C_inv_half @ y_w
    h = np.linalg.norm(ps) / math.sqrt(1 - (1 - cs) ** (2 * g)) < (1.4 + 2 / (n + 1)) * p["chi_n"]
    pc = (1 - cc) * state["p_c"] + h * math.sqrt(cc * (2 - cc) * p["mueff"]) * y_w  # eq. (45)
    rank_mu = np.zeros((n, n))
    for wi, yi in zip(w, ys, strict=True):
        wo = wi if wi >= 0 else wi * n / np.sum((C_inv_half @ yi) ** 2)  # eq. (46)
        rank_mu += wo * np.outer(yi, yi)
    delta_h = (1 - h) * cc * (2 - cc)
    C = (1 + c1 * delta_h - c1 - cmu * w.sum()) * C + c1 * np.outer(pc, pc) + cmu * rank_mu
    sigma *= math.exp(cs / p["damps"] * (np.linalg.norm(ps) / p["chi_n"] - 1))  # eq. (44)
    new = {"mean": mean, "sigma": np.array(sigma), "C": C, "p_sigma": ps, "p_c": pc,
           "generation": np.array(g)}
    return new, bool(h)
