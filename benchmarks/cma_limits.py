"""What limits a CMA-ES block's covariance: the stalled path and the active update.

    python benchmarks/cma_limits.py                        # checkpoints/cma_es_4d, 4096 problems
    python benchmarks/cma_limits.py RUN_OR_CHECKPOINT --count 1024 --seed 7

On fresh problems (default seed 12345) it prints, per generation k:

- the share of problems on which the teacher's h_sigma is 0 (the update of p_c stalls, and C's
  rank-one term shrinks), and the stack's teacher-forced median error of C, p_c and sigma on
  those problems and on the others;
- the median norms, in the affine frame, of the teacher's move of C and of its terms (Hansen,
  arXiv:1604.00772, eq. (47) with C = I): the positive rank-mu term, the active term (the
  negative weights, each scaled by n / ||z||^2 as pycma does) and the rank-one term. The decay
  of C is (nearly) cancelled by the negative weights' sum, so these three make up the move.

The counts come from the teacher alone; the errors from the stack. One thread.
"""

from __future__ import annotations

import argparse

import torch

from blockwise import load_stack
from blockwise.checkpoints import read_config
from blockwise.config import recipe_from_dict
from blockwise.evaluation.stack_eval import held_out
from blockwise.evaluation.teacher_forced import one_step_errors


def move_terms(stack, problem, traj, k: int) -> dict[str, torch.Tensor]:
    """Norms (B,) of C's move s_{k-1} -> s_k in the affine frame and of its three terms."""
    codec = stack.codec
    p = codec.teacher.params(problem.dim)
    now, after = traj[k - 1], traj[k]
    enc = codec.encode(now, problem)
    nxt = codec.to_frame(after, enc.frame)
    # The draws as the teacher made them: z_k = C^-1/2 (x_k - m) / sigma, by the frame.
    z = enc.frame.points_to(traj.extras["candidates"][k - 1])  # (B, lambda, n)
    order = torch.argsort(traj.extras["fvals"][k - 1], dim=1, stable=True)
    z = torch.take_along_dim(z, order[..., None], dim=1)
    w = torch.tensor(p.weights, dtype=z.dtype)
    n = problem.dim
    w_active = w.clamp(max=0) * n / (z.norm(dim=-1) + 1e-9) ** 2  # (B, lambda)
    eye = torch.eye(n, dtype=z.dtype)
    terms = {
        "move": nxt["C"] - eye,
        "rank-mu +": p.cmu * torch.einsum("i,bij,bik->bjk", w.clamp(min=0), z, z),
        "active": p.cmu * torch.einsum("bi,bij,bik->bjk", w_active, z, z),
        "rank-one": p.c1 * nxt["p_c"][:, :, None] * nxt["p_c"][:, None, :],
    }
    return {name: t.flatten(1).norm(dim=1) for name, t in terms.items()}


def _split(errors: torch.Tensor, on: torch.Tensor) -> str:
    """Median of errors (B,) where h_sigma is 1 (`on`) and where it is 0."""
    off = errors[~on].nanmedian().item() if (~on).any() else float("nan")
    return f"{errors[on].nanmedian().item():9.3f} {off:5.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stack", nargs="?", default="checkpoints/cma_es_4d")
    parser.add_argument("--count", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stack = load_stack(args.stack).eval()
    recipe = recipe_from_dict(read_config(args.stack)["recipe"])
    if recipe.teacher.name != "cma_es" or recipe.codec.frame != "affine":
        raise SystemExit(f"{args.stack}: needs a CMA-ES stack in the affine frame")
    problem, traj = held_out(recipe, recipe.steps, args.count, args.seed)
    print(f"{args.stack}: {args.count} problems, seed {args.seed}")
    print("k  h_sigma=0  | C err h=1  h=0  | p_c err h=1  h=0 | sigma err h=1  h=0 "
          "| norms: move  rank-mu +  active  rank-one")
    with torch.no_grad():
        for k in range(1, recipe.steps + 1):
            errors = one_step_errors(stack, problem, traj, k)
            on = traj.extras["h_sigma"][k - 1].bool()
            terms = move_terms(stack, problem, traj, k)
            norms = "  ".join(f"{v.median().item():.3f}" for v in terms.values())
            print(f"{k:<2} {(~on).double().mean().item():9.2f}  |{_split(errors['C'], on)}  "
                  f"|{_split(errors['p_c'], on)}  |{_split(errors['sigma'], on)}  | {norms}")


if __name__ == "__main__":
    main()
