"""One layer's probes: every teacher quantity read from every site of the stream, beside its
controls.

Sites, features per problem (B, T r) from every token's dimensions (from the read-out's tokens
alone where all of them would be more than MAX_FEATURES, `site_tokens`):
    input         the layer's input stream, read_in(tokens): the codec's slots, nothing more;
                  what a probe finds here the tokens already held (linearly)
    stream        the block's output stream (hook_resid_post), every dimension
    beyond_slots  the same with the codec's slots removed (`capture.beyond_slots`): where a
                  quantity must live if the block computes it without the read-out reading it;
                  None when the stream has no other dimensions (width == token_dim)
    heads         the heads' outputs before the output projection (attn.hook_z) at the tokens
                  the read-out reads

Controls (Hewitt & Liang 2019: a probe's score means something only beside what the same probe
scores where the property cannot be): `control`, the same probe on the untrained stack's
block fed the same input state; `shuffled`, the same probe on the trained stack with the
training problems' labels permuted, scored on the true held-out labels.

Per quantity and site: {"r2", "control_r2", "shuffled_r2", "lambda"}; for classes "accuracy",
"control_accuracy", "shuffled_accuracy", "chance", "lambda" and the same accuracies as skill
(`skill`: 0 always the commonest class, 1 always right). The input site has "r2" (or
"accuracy", "skill") alone: both stacks share it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from blockwise.probes.attention import query_tokens
from blockwise.probes.capture import Captured, features
from blockwise.probes.linear import RidgeProbe, logistic_probe
from blockwise.probes.quantities import Quantity

SITES = ("input", "stream", "beyond_slots", "heads")
MAX_FEATURES = 1024
BULK = 0.99
"""Problems whose layer input (the tokens) lies further from the training problems' than this
quantile of theirs (`outlying`), or whose quantities are larger (in norm), are left out of
every probe of the layer. Near-degenerate frames give tokens and values thousands of
times the usual size (a Nelder-Mead simplex almost flat: its problem tokens E^T A E / f_scale,
its f values in the frame), or tokens of another kind (a simplex too flat for the affine frame
is encoded in the scale frame, not as the standard simplex), and one such held-out problem
would decide a least-squares probe's held-out R^2."""
CONSTANT_SHARE = 0.95
"""A quantity equal to its median on this share of problems is reported constant in the frame,
not probed: the frame itself computed it."""
CLASS_SHARE = 0.99
"""Classes of which one holds on this share of the problems are not probed: the ten or so
held-out problems of the others could not tell a probe from a guess."""


def site_tokens(codec, width: int) -> list[int]:
    """The tokens whose dimensions the stream sites read: all of them, or, where that would
    pass MAX_FEATURES (a probe costs the cube of its features), those the read-out reads."""
    if codec.num_tokens * width <= MAX_FEATURES:
        return list(range(codec.num_tokens))
    return query_tokens(codec)


def site_features(captured: Captured, codec, basis: Tensor | None) -> dict[str, Tensor | None]:
    """Site name -> features (B, p) of one captured layer (None: the site does not exist)."""
    cache = captured.cache
    tokens = site_tokens(codec, cache["hook_resid_post"].shape[-1])
    post = cache["hook_resid_post"][:, tokens]
    return {
        "input": features(cache["hook_resid_pre"][:, tokens]),
        "stream": features(post),
        "beyond_slots": None if basis is None else features(post, basis),
        "heads": features(cache["attn.hook_z"][:, query_tokens(codec)]),
    }


def constant_in_frame(q: Quantity) -> dict | None:
    """{"value", "share"} if the quantity equals its median (to 1e-9) on at least
    CONSTANT_SHARE of the problems where it is defined (classes: one class on CLASS_SHARE of
    them), else None."""
    values = q.values[q.defined]
    if q.classes is not None:
        codes, counts = torch.unique(values, return_counts=True)
        share = float(counts.max() / counts.sum())
        top = q.classes[int(codes[counts.argmax()])]
        return {"value": [top], "share": share} if share >= CLASS_SHARE else None
    median = values.median(0).values
    same = ((values - median).abs() <= 1e-9 * (1 + median.abs())).all(-1)
    share = float(same.double().mean())
    return {"value": median.tolist(), "share": share} if share >= CONSTANT_SHARE else None


def skill(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 for always the commonest class, 1 for always
    right; NaN when one class is all there is."""
    return (accuracy - chance) / (1 - chance) if chance < 1 else float("nan")


def outlying(x: Tensor, rows: Tensor) -> Tensor:
    """(B,) each problem's squared distance from the mean of features x (B, p) over `rows`,
    each feature in units of its standard deviation there (a feature that does not vary
    there, in units of 1e-9 of the largest one's: a problem that moves along it is far out).
    Feature by feature, not in the inverse covariance: with as many features as a tenth of the
    training problems, that inflates every held-out problem's distance over the training
    problems' own."""
    x = x.double()
    centre, spread = x[rows].mean(0), x[rows].std(0, correction=0)
    spread = spread.clamp_min(1e-9 * spread.amax().clamp_min(1e-300))
    return (((x - centre) / spread) ** 2).sum(-1)


def probe_layer(
    trained: dict[str, Tensor | None],
    control: dict[str, Tensor | None],
    quantities: dict[str, Quantity],
    train: Tensor,
    permutation: Tensor,
) -> tuple[dict[str, dict[str, dict | None]], dict[str, int]]:
    """(quantity -> site -> scores, {"train", "test"}: the problems used) for one layer.

    Args:
        trained, control: site -> features (B, p), of the trained and untrained stack.
        quantities: name -> Quantity on the B problems (those reported constant left out).
        train: (B,) bool, the training problems; the rest are held out.
        permutation: (N_train,) the shuffle of the shuffled-label control.
    """
    rows = torch.stack([q.defined for q in quantities.values()]).all(0)
    for x in (*trained.values(), *control.values()):
        if x is not None:
            rows &= torch.isfinite(x).all(-1)
    sizes = [outlying(trained["input"], train & rows)]
    sizes += [q.values.reshape(len(q.values), -1).norm(dim=-1) for q in quantities.values()
              if q.classes is None]
    bulk = [size <= torch.quantile(size[train & rows], BULK) for size in sizes]
    rows &= torch.stack(bulk).all(0)
    fit, held = train & rows, ~train & rows
    perm = permutation[permutation < int(fit.sum())]
    out: dict[str, dict[str, dict | None]] = {name: {} for name in quantities}
    for site in SITES:
        x = trained[site]
        if x is None:
            for name in quantities:
                out[name][site] = None
            continue
        probe = RidgeProbe(x[fit], x[held])
        other = None if site == "input" else RidgeProbe(control[site][fit], control[site][held])
        for name, q in quantities.items():
            y, y_test = q.values[fit], q.values[held]
            if q.classes is None:
                main, shuffled = probe.score(y, y_test), probe.score(y[perm], y_test)
                scores = {"r2": main.r2, "lambda": main.lam}
                if other is not None:
                    scores |= {"control_r2": other.score(y, y_test).r2, "shuffled_r2": shuffled.r2}
            else:
                main = logistic_probe(x[fit], y, x[held], y_test, ridge=probe)
                scores = {"accuracy": main.accuracy, "skill": skill(main.accuracy, main.chance),
                          "chance": main.chance, "lambda": main.lam}
                if other is not None:
                    c = logistic_probe(control[site][fit], y, control[site][held], y_test, other)
                    s = logistic_probe(x[fit], y[perm], x[held], y_test, ridge=probe)
                    scores |= {"control_accuracy": c.accuracy,
                               "control_skill": skill(c.accuracy, main.chance),
                               "shuffled_accuracy": s.accuracy,
                               "shuffled_skill": skill(s.accuracy, main.chance)}
            out[name][site] = scores
    return out, {"train": int(fit.sum()), "test": int(held.sum())}
