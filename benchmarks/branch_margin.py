"""What limits a Nelder–Mead stack: the wrong branch near a decision boundary, or precision?

    python benchmarks/branch_margin.py checkpoints/nelder_mead_2d_oracle_cpu \\
        --json results/nelder_mead_2d_oracle_cpu.margin.json

Teacher-forced on held-out problems, at every step k (`blockwise/evaluation/branch_margin.py`
defines the margin and the chosen branch). Per group of steps and margin bin it prints the share
of steps, the wrong-branch rate and the median normalized error of the simplex, on all, right
and wrong steps, and the p90; then per branch the median error on right steps alone, the
precision floor. One thread, CPU; a 96-layer stack on 4096 problems takes under a minute.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from blockwise.checkpoints import load_stack, read_config
from blockwise.config import recipe_from_dict, saved_recipe
from blockwise.evaluation.branch_margin import step_records, summarize_steps
from blockwise.evaluation.stack_eval import held_out
from blockwise.files import write_atomic
from blockwise.jsonable import to_jsonable


def groups(depth: int) -> dict[str, range]:
    """Step groups: the first 4, 5 to 8 (where the branch mix shifts), then 9-32 and 33-K."""
    edges = [(1, 4), (5, 8), (9, 32), (33, depth)]
    return {f"k = {a}-{min(b, depth)}": range(a, min(b, depth) + 1)
            for a, b in edges if a <= depth}


def show(name: str, group: dict) -> str:
    g = lambda s: "-" if s["count"] == 0 else f"{s['median']:.3g}"  # noqa: E731
    lines = [f"{name}: {group['steps']} steps, wrong branch {group['wrong_rate']:.2%}, "
             f"median error {g(group['error'])} (right branch {g(group['error_right'])})",
             "  margin        share   wrong   median  right   wrong   p90"]
    for b in group["bins"]:
        lo, hi = b["margin"]
        hi = float("inf") if hi is None else hi
        rate = "-" if b["wrong_rate"] is None else f"{b['wrong_rate']:.1%}"
        p90 = "-" if b["error"]["count"] == 0 else f"{b['error']['p90']:.3g}"
        lines.append(f"  [{lo:g}, {hi:g})".ljust(16) + f"{b['share']:6.1%}  {rate:>6}  "
                     f"{g(b['error']):>6}  {g(b['error_right']):>6}  {g(b['error_wrong']):>6}  "
                     f"{p90:>6}")
    floors = ", ".join(f"{k} {g(v)} ({v['count']})"
                       for k, v in group["right_by_branch"].items() if v["count"])
    lines.append(f"  right-branch median by branch (steps): {floors}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a Nelder–Mead stack's checkpoint or run directory")
    parser.add_argument("--steps", type=int, help="steps (default the recipe's)")
    parser.add_argument("--count", type=int, default=4096, help="held-out problems")
    parser.add_argument("--seed", type=int, default=12345, help="their seed")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = recipe_from_dict(saved_recipe(read_config(args.checkpoint)["recipe"]))
    if recipe.teacher.name != "nelder_mead":
        parser.error(f"{args.checkpoint}: teacher {recipe.teacher.name!r}; this reads "
                     "scipy's Nelder–Mead branches only")
    stack = load_stack(args.checkpoint)
    stack.eval()
    steps = args.steps or recipe.steps
    start = time.perf_counter()
    problem, traj = held_out(recipe, steps, args.count, args.seed)
    records = [step_records(stack, problem, traj, k) for k in range(1, steps + 1)]
    result = {"checkpoint": args.checkpoint, "recipe": recipe.name, "problems": args.count,
              "seed": args.seed, "steps": steps,
              "groups": {name: summarize_steps([records[k - 1] for k in ks])
                         for name, ks in groups(steps).items()}}
    print(f"{recipe.name} ({recipe.codec.mode}): {args.count} held-out problems (seed "
          f"{args.seed}), teacher-forced; margin in units of f_n - f_0; "
          f"{time.perf_counter() - start:.0f} s")
    for name, group in result["groups"].items():
        print(show(name, group))
    if args.json:
        write_atomic(args.json, json.dumps(to_jsonable(result), indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
