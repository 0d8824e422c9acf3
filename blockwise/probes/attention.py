"""Where the heads look: per layer and head, the attention that the tokens holding the learned
fields (the ones the read-out reads: Nelder-Mead's vertices, GD's iterate, CMA's optimizer
tokens) pay to groups of tokens, and whether the most attended token is the teacher's choice.

Groups (each a set of key tokens, per problem):
    Nelder-Mead  moved (the vertices the step moves), best (rank 0), other_vertices, problem
                 (the problem tokens), trial_points (oracle mode); agreement: the share of
                 problems whose most attended vertex (averaged over the queries) is a moved one
    CMA-ES       selected (the mu best candidates), other_candidates, optimizer, problem;
                 agreement: the share of the mu most attended candidates that are selected
    gradient     one group per token kind: the iterate, each buffer, each problem token group
                 (least squares: context and value_scales); there is no choice to agree with
A group with no tokens (oracle mode's absent problem tokens) is left out. Chance is what a
head spreading its attention evenly would score. Where the teacher's choice
is nearly always the same token (scipy's Nelder-Mead moves the worst vertex unless it
shrinks), `choice_share` says so: agreement then shows a head's fixed preference, not a choice.

A softmax head's pattern is a distribution over keys. A linear-attention head (von Oswald et
al. 2023) has raw scores q.k instead, of either sign and any size: masses are then shares of
|score| per query, and for least squares the report adds how well the iterate's scores to the
context tokens follow the residuals w.x_i - y_i (a linear fit pooled over problems and
tokens, R^2), the mechanism by which such a layer computes the gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from blockwise.codec import CMACodec, GradientCodec, SimplexCodec
from blockwise.probes.linear import r2_score
from blockwise.probes.quantities import Quantity


def query_tokens(codec) -> list[int]:
    """The positions, in order, of the tokens holding learned fields (the read-out's)."""
    kinds = {p.kind for p in codec.placements.values()}
    return [t for kind, where in codec.positions.items() if kind in kinds
            for t in range(where.start, where.stop)]


def _mask(codec, kinds: list[str], batch: int) -> Tensor:
    """(B, T) bool: the tokens of the given kinds, for every problem."""
    mask = torch.zeros(batch, codec.num_tokens, dtype=torch.bool)
    for kind in kinds:
        mask[:, codec.positions[kind]] = True
    return mask


def key_groups(codec, quantities: dict[str, Quantity]) -> dict[str, Tensor]:
    """Group name -> (B, T) bool: which key tokens belong to it, per problem."""
    batch = next(iter(quantities.values())).values.shape[0]
    problem = list(codec.groups)
    if isinstance(codec, SimplexCodec):
        n, vertex = codec.dim, codec.positions["vertex"]
        bits = quantities["moved"].values.clamp_min(0)
        moved = torch.zeros(batch, codec.num_tokens, dtype=torch.bool)
        moved[:, vertex] = (bits[:, None] >> torch.arange(n + 1)) & 1 == 1
        best = torch.zeros_like(moved)
        best[:, vertex.start] = True  # never moved: every rule keeps the best vertex
        groups = {
            "moved": moved,
            "best": best,
            "other_vertices": _mask(codec, ["vertex"], batch) & ~moved & ~best,
            "problem": _mask(codec, problem, batch),
        }
        trials = [k for k in codec.positions if k not in problem and k != "vertex"]
        if trials:
            groups["trial_points"] = _mask(codec, trials, batch)
        return groups
    if isinstance(codec, CMACodec):
        mu = codec.teacher.params(codec.dim).mu
        selected = torch.zeros(batch, codec.num_tokens, dtype=torch.bool)
        selected[:, codec.positions["candidate"]] = quantities["candidate_ranks"].values < mu
        optimizer = [k for k in codec.positions if k not in problem and k != "candidate"]
        return {
            "selected": selected,
            "other_candidates": _mask(codec, ["candidate"], batch) & ~selected,
            "optimizer": _mask(codec, optimizer, batch),
            "problem": _mask(codec, problem, batch),
        }
    if isinstance(codec, GradientCodec):
        return {kind: _mask(codec, [kind], batch) for kind in codec.positions}
    raise ValueError(f"probes: no attention groups for {type(codec).__name__}")


def attention_stats(
    pattern: Tensor, codec, quantities: dict[str, Quantity], kind: str
) -> dict:
    """One layer's pattern (B, heads, T, T) summarized: per head {"mass": {group: the mean
    share of the queries' attention}, "agreement"}; the "chance" of each; "choice_share"; and
    for linear attention on least squares "scores_follow_residuals" per head. `kind` is the
    attention kind, "softmax" or "linear"."""
    defined = torch.stack([q.defined for q in quantities.values()]).all(0)
    pattern = pattern[defined].double()
    quantities = {name: Quantity(q.values[defined], q.meaning, q.classes)
                  for name, q in quantities.items()}
    weights = pattern[:, :, query_tokens(codec)]  # (B, H, Q, T)
    if kind == "linear":
        weights = weights.abs() / weights.abs().sum(-1, keepdim=True).clamp_min(1e-300)
    groups = {g: m for g, m in key_groups(codec, quantities).items() if m.any()}
    share = {g: (weights * m[:, None, None, :]).sum(-1).mean((0, 2)) for g, m in groups.items()}
    agreement, agreement_chance = _agreement(weights.mean(2), codec, groups)
    out = {
        "kind": kind,
        "heads": [
            {"mass": {g: float(s[h]) for g, s in share.items()},
             "agreement": None if agreement is None else float(agreement[h])}
            for h in range(pattern.shape[1])
        ],
        "chance": {
            "mass": {g: float(m.double().sum(-1).mean() / codec.num_tokens)
                     for g, m in groups.items()},
            "agreement": agreement_chance,
        },
        "choice_share": _choice_share(codec, groups),
    }
    if kind == "linear" and "residuals" in quantities:
        out["scores_follow_residuals"] = residual_fit(pattern, codec, quantities["residuals"])
    return out


def _agreement(
    weights: Tensor, codec, groups: dict[str, Tensor]
) -> tuple[Tensor | None, float | None]:
    """(heads,) the share of problems (NM) or of the mu most attended candidates (CMA) that the
    teacher chose, from weights (B, H, T) averaged over the queries; and its chance."""
    if isinstance(codec, SimplexCodec):
        vertex = codec.positions["vertex"]
        top = weights[:, :, vertex].argmax(-1)  # (B, H)
        moved = groups["moved"][:, vertex]  # (B, n+1)
        return moved.gather(1, top).double().mean(0), float(moved.double().mean())
    if isinstance(codec, CMACodec):
        candidate = codec.positions["candidate"]
        selected = groups["selected"][:, candidate]  # (B, lambda)
        mu = int(selected[0].sum())
        top = weights[:, :, candidate].topk(mu, dim=-1).indices  # (B, H, mu)
        hit = selected[:, None, :].expand(-1, weights.shape[1], -1).gather(2, top)
        return hit.double().mean((0, 2)), mu / selected.shape[1]
    return None, None


def _choice_share(codec, groups: dict[str, Tensor]) -> float | None:
    """The share of problems whose teacher's choice (the moved vertices, the selected
    candidates) is the commonest one; None where the teacher makes none."""
    name = "moved" if isinstance(codec, SimplexCodec) else "selected"
    if name not in groups:
        return None
    _, counts = torch.unique(groups[name], dim=0, return_counts=True)
    return float(counts.max() / counts.sum())


def residual_fit(pattern: Tensor, codec, residuals: Quantity) -> list[float]:
    """Per head: R^2 of the iterate query's raw scores to the context tokens against the
    residuals w.x_i - y_i, a linear fit with intercept pooled over problems and tokens."""
    iterate = codec.positions["iterate"].start
    scores = pattern[:, :, iterate, codec.positions["context"]]  # (B, H, N)
    r = residuals.values.reshape(-1)
    design = torch.stack([r, torch.ones_like(r)], 1)
    fits = []
    for h in range(scores.shape[1]):
        s = scores[:, h].reshape(-1, 1).double()
        coef = torch.linalg.lstsq(design, s).solution
        fits.append(float(r2_score(design @ coef, s)[0]))
    return fits


def mean_pattern(pattern: Tensor, kind: str) -> Tensor:
    """(heads, T, T) the pattern averaged over problems: the softmax weights, or for linear
    attention each query's shares of |score|."""
    p = pattern.double()
    if kind == "linear":
        p = p.abs() / p.abs().sum(-1, keepdim=True).clamp_min(1e-300)
    return p.mean(0)
