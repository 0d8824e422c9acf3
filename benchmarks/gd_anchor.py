"""Does a stack of GD blocks, fine-tuned to optimize, find a better optimizer than its teacher?

The comparison of von Oswald et al. 2023 (ICML, Fig. 3), on a finished `blockwise run` of
recipes/gd_least_squares.yaml: per layer k, the median over held-out problems of the optimality
gap f(w_k) - f*, for
    GD          the teacher, K steps at its own rate;
    GD, best η  K steps of GD at the one rate that minimizes the objective below (their
                line-searched GD);
    GD, η per layer  the same with a rate per layer (a step-size schedule);
    GD++        their curvature-corrected GD: a layer also moves the context inputs,
                x_j <- x_j - γ_l Σ_i x_i x_i^T x_j. On w that is preconditioned GD,
                w_l = w_{l-1} - η_l M_{l-1}^2 ∇f(w_{l-1}), M_l = M_{l-1} (I - γ_l H M_{l-1}^2),
                M_0 = I, H = X^T X / N (derived from their token update: the context inputs
                after l layers are M_l x_i, and every M_l is a polynomial in H, so they commute);
    stacked     the run's pretrained blocks, stacked;
    fine-tuned  those blocks fine-tuned end to end with each objective named (emulate is the
                recipe's `log_normalized`; `optimize` minimizes the objective itself).
η (one, or one per layer) and γ are fitted by L-BFGS on 4096 of the run's training problems,
minimizing the sum over layers of the mean log relative gap: the `optimize` objective's own
loss, so every row had the same goal. Fine-tuning runs go to --scratch and are removed when
done, so a second call trains them again.

    python benchmarks/gd_anchor.py /tmp/gd/run --threads 1 --json results/gd_anchor.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from blockwise.build import build_codec, load_data
from blockwise.config import load_recipe
from blockwise.evaluation.stack_eval import evaluate_stack
from blockwise.evaluation.trade import layer_trade
from blockwise.model import ReadIO
from blockwise.stack import Stack
from blockwise.training.finetune import log_gap_loss, train_stack
from blockwise.training.pretrain import pretrain
from blockwise.training.trainer import drop_resume

DEFAULT_FINETUNES = ("log_normalized", "optimize:lr=3e-4,max_epochs=20,balance_layers=false")


def gd_plus_plus(x: Tensor, y: Tensor, w0: Tensor, eta: Tensor, gamma: Tensor) -> list[Tensor]:
    """Iterates [w_1, ..., w_K] (B, d) of GD++ on f(w) = (1/2N) ||X w - y||^2; x (B, N, d),
    y (B, N), w0 (B, d), eta and gamma (K,). gamma = 0 is plain GD with per-layer rates."""
    n = x.shape[1]
    h = x.mT @ x / n  # (B, d, d)
    m = torch.eye(x.shape[2], dtype=x.dtype).expand_as(h)
    w, out = w0, []
    for eta_l, gamma_l in zip(eta, gamma, strict=True):
        grad = ((x @ w[..., None])[..., 0] - y)[:, None, :] @ x / n  # (B, 1, d)
        w = w - eta_l * (grad @ m @ m)[:, 0]  # M symmetric: (M^2 g)^T = g^T M^2
        m = m - gamma_l * m @ h @ m @ m
        out.append(w)
    return out


def f_ls(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """(B,) f(w) = (1/2N) sum_i (w . x_i - y_i)^2."""
    return 0.5 * ((x @ w[..., None])[..., 0] - y).square().mean(-1)


def fit(x, y, w0, f_star, eta: Tensor, gamma: Tensor, train_gamma: bool) -> tuple[Tensor, Tensor]:
    """eta (K or 1: one rate for every layer) and gamma (K,) minimizing the sum over layers of
    `log_gap_loss` on training problems, from the given start; gamma stays as given unless
    `train_gamma`. L-BFGS: at most 2K scalars, full batch."""
    eta = eta.clone().requires_grad_()
    gamma = gamma.clone().requires_grad_(train_gamma)
    opt = torch.optim.LBFGS(
        [eta, gamma] if train_gamma else [eta],
        max_iter=500,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
    )
    start = f_ls(x, y, w0)

    def closure() -> Tensor:
        opt.zero_grad()
        ws = gd_plus_plus(x, y, w0, eta.expand_as(gamma), gamma)
        loss = sum(log_gap_loss(f_ls(x, y, w), start, f_star) for w in ws)
        loss.backward()
        return loss

    opt.step(closure)
    return eta.detach().expand_as(gamma), gamma.detach()


def median_gaps(x, y, w0, eta, gamma, f_star) -> list[float]:
    """Median over problems of f(w_k) - f* for k = 0..K, as `evaluate_stack` reports it."""
    ws = [w0, *gd_plus_plus(x, y, w0, eta, gamma)]
    gaps = [(f_ls(x, y, w) - f_star).clamp(min=1e-300) for w in ws]
    return [torch.quantile(gap, 0.5).item() for gap in gaps]  # as evaluation's median


def problem_arrays(split, count: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x (B, N, d), y (B, N), w0 (B, d), f* (B,) of the first `count` (default all) problems
    of one data split, in float64."""
    problem, traj = split
    problem = problem[:count]
    x, y = problem.params["x"], problem.params["y"]
    w0 = traj.states["x"][0][:count].to(x)
    return x, y, w0, f_ls(x, y, problem.minimizer())


def finetuned(run: Path, blocks, data, scratch: Path, spec: str):
    """The run's stacked blocks fine-tuned with the recipe's finetune section changed by
    `spec`, "OBJECTIVE[:KEY=VALUE,...]" (e.g. "optimize:max_epochs=20"); returns (name, stack)."""
    objective, _, rest = spec.partition(":")
    changes = [f"finetune.objective={objective}"]
    changes += [f"finetune.{kv}" for kv in rest.split(",") if kv]
    recipe = load_recipe(run / "recipe.yaml", changes)
    codec = build_codec(recipe, data["test"][0])
    stack = Stack(codec, ReadIO(codec.token_dim, recipe.block.width), copy.deepcopy(blocks))
    name = spec.replace(":", "_").replace("=", "").replace(",", "_")
    stack = train_stack(recipe, stack, data, scratch, name)
    drop_resume(scratch, name)
    return name, stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished run of a GD least-squares recipe")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--scratch", type=Path, default=None, help="fine-tuning runs (default RUN/anchor)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--finetune",
        action="append",
        default=None,
        metavar="OBJECTIVE[:KEY=VALUE,...]",
        help="a fine-tuning to compare: the recipe's finetune section with these changes "
        f"(repeatable; default {' and '.join(DEFAULT_FINETUNES)})",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.run / "recipe.yaml")
    data = load_data(recipe, device="cpu")
    start = time.perf_counter()
    # 4096 problems fit 2K scalars well, in seconds.
    train_x, train_y, train_w0, train_star = problem_arrays(data["train"], 4096)
    train = (train_x, train_y, train_w0, train_star)
    ones, zeros = (torch.full((recipe.steps,), v, dtype=train_x.dtype) for v in (1.0, 0.0))
    fits = {
        "GD, best eta": fit(*train, ones[:1], zeros, False),
        "GD, eta per layer": fit(*train, ones, zeros, False),
    }
    # GD++ from the best GD: its landscape is not convex, and GD is the point gamma = 0 of it.
    fits["GD++"] = fit(*train, fits["GD, eta per layer"][0], zeros, True)
    fitting = time.perf_counter() - start

    problem, traj = data["test"]
    x, y, w0, f_star = problem_arrays(data["test"])
    lr = recipe.teacher.settings.get("lr", 1.0)
    table = {"GD (teacher)": median_gaps(x, y, w0, lr * ones, zeros, f_star)}
    table |= {name: median_gaps(x, y, w0, *p, f_star) for name, p in fits.items()}

    blocks = pretrain(recipe, args.run, data, log=lambda *_: None)["trained"]
    codec = build_codec(recipe, problem)
    stacked = Stack(codec, ReadIO(codec.token_dim, recipe.block.width), blocks)
    evaluations = {"stacked": evaluate_stack(stacked, problem, traj)}
    scratch = args.scratch or args.run / "anchor"
    seconds = {}
    for spec in args.finetune or DEFAULT_FINETUNES:
        t0 = time.perf_counter()
        name, stack = finetuned(args.run, blocks, data, scratch, spec)
        seconds[name] = time.perf_counter() - t0
        evaluations[name] = evaluate_stack(stack, problem, traj)
    for name, ev in evaluations.items():
        table[name] = ev["objective"]["emulated"]["median"]

    names = list(table)
    print(f"median f - f* over {x.shape[0]} test problems per layer ({args.run}):")
    print("layer " + " | ".join(f"{n:>16}" for n in names))
    for k in range(recipe.steps + 1):
        print(f"{k:>5} " + " | ".join(f"{table[n][k]:>16.4g}" for n in names))
    for name, (eta, gamma) in fits.items():
        print(
            f"{name}: eta {[round(v, 4) for v in eta.tolist()]}, "
            f"gamma {[round(v, 4) for v in gamma.tolist()]}"
        )
    errors = {n: ev["rollout"]["x"]["median"] for n, ev in evaluations.items()}
    trades = {
        n: layer_trade(evaluations["stacked"], ev)
        for n, ev in evaluations.items()
        if n != "stacked"
    }
    print("rollout median x error per layer:")
    for n, e in errors.items():
        print(f"  {n:<24} " + " ".join(f"{v:.3g}" for v in e))
    print(f"fine-tuning seconds: {seconds}; fitting eta/gamma: {fitting:.1f} s")
    if args.json:
        result = {
            "run": str(args.run),
            "median_gap": table,
            "rollout_x_median": errors,
            "trade": trades,
            "fits": {n: {"eta": e.tolist(), "gamma": g.tolist()} for n, (e, g) in fits.items()},
            "seconds": {"finetune": seconds, "fit": fitting},
            "threads": args.threads,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
