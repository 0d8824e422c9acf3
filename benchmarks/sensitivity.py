"""How deep does per-step accuracy alone carry a stack? The teacher with a known one-step error.

    python benchmarks/sensitivity.py recipes/nelder_mead_2d.yaml \\
        --matched checkpoints/nelder_mead_2d --json results/nelder_mead_2d.sensitivity.json

For each eps it rolls out `PerturbedTeacher` (blockwise/evaluation/perturbed.py): the recipe's
teacher, every learned field moved by eps times the teacher's own move at every step, in a random
direction, decoded with the recipe's bookkeeping. It is the control for a breakdown depth: what
rollout error, breakdown depth and progress ratio any stack whose teacher-forced error is eps at
every step gets from the optimizer's own amplification of that error. With --matched CHECKPOINT,
two more rows: the saved stack itself on the same problems, and the teacher perturbed by that
stack's own teacher-forced error on each problem at each step (the magnitudes the stack makes,
in random directions). A stack that breaks down where its matched row does is limited by the
sizes of its blocks' one-step errors; one that does better makes errors where they cost little,
one that does worse makes errors that add up.

Held-out problems (--seed, default 12345), one thread, CPU. The recipe's `steps` layers unless
--steps; the rollout of 96 Nelder–Mead steps on 4096 problems takes a few seconds per eps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from blockwise.build import build_codec
from blockwise.checkpoints import load_stack, read_config
from blockwise.config import load_recipe, recipe_from_dict
from blockwise.evaluation.perturbed import PerturbedTeacher
from blockwise.evaluation.stack_eval import evaluate_stack, held_out
from blockwise.evaluation.teacher_forced import one_step_errors
from blockwise.files import write_atomic
from blockwise.jsonable import to_jsonable

DEFAULT_EPS = "0,1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,0.1"
SHOWN = (1, 8, 16, 32, 64, 96)
"""The layers the printed table shows (those the stack has, and its last)."""
BLOWN = 1e3
"""A matched error that is inf (the block blew up) or above this is perturbed by this much."""


def saved_recipe(checkpoint: str):
    """The recipe a checkpoint directory was trained with."""
    return recipe_from_dict(read_config(checkpoint)["recipe"])


def own_errors(stack, problem, traj, layers: int) -> torch.Tensor:
    """(L, B) the stack's teacher-forced error of its primary field at each layer and problem,
    0 where undefined (the teacher did not move it), capped at BLOWN. The matched row perturbs
    every learned field by these sizes: with f evaluated between layers only the primary field
    (the simplex) reaches the next layer; with its own f, f gets the simplex's error sizes."""
    field = stack.codec.learned_fields[0]
    stack.eval()
    with torch.no_grad():
        rows = [one_step_errors(stack, problem, traj, k, min(k, stack.depth))[field]
                for k in range(1, layers + 1)]
    return torch.stack(rows).nan_to_num(0.0, posinf=BLOWN).clamp(max=BLOWN)


def summary(metrics: dict) -> dict:
    """The numbers the table prints, from an `evaluate_stack` result."""
    field = metrics["primary"]
    progress = metrics["progress_ratio"]["median"]
    through = 0  # the last layer of the run of layers from 1 that keep 95% of the progress
    while through < len(progress) and (progress[through] or 0) >= 0.95:
        through += 1
    return {
        "teacher_forced_median": metrics["teacher_forced"][field]["median"],
        "rollout_median": metrics["rollout"][field]["median"],
        "progress_median": progress,
        "breakdown_depth": metrics["breakdown_depth"],
        "progress_at_least_0.95_through": through,
    }


def table(rows: dict[str, dict], layers: int) -> str:
    shown = sorted({k for k in SHOWN if k <= layers} | {layers})  # and always the last
    head = (["row", "TF median (mean over layers)"] + [f"rollout {k}" for k in shown]
            + ["breakdown", f"progress {shown[-1]}", "progress >= 0.95 through"])
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for label, row in rows.items():
        tf = [v for v in row["teacher_forced_median"] if v is not None]
        cells = [label, f"{sum(tf) / max(len(tf), 1):.3g}"]
        cells += [f"{row['rollout_median'][k - 1]:.3g}" for k in shown]
        cells += [str(row["breakdown_depth"] or "none"),
                  f"{row['progress_median'][shown[-1] - 1]:.3f}",
                  str(row["progress_at_least_0.95_through"])]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", help="a recipe file, or a checkpoint directory (its recipe)")
    parser.add_argument("--eps", default=DEFAULT_EPS, help="one-step errors, comma-separated")
    parser.add_argument("--matched", help="a checkpoint whose own errors make one more row")
    parser.add_argument("--steps", type=int, help="layers (default the recipe's steps)")
    parser.add_argument("--count", type=int, default=4096, help="held-out problems")
    parser.add_argument("--seed", type=int, default=12345, help="their seed")
    parser.add_argument("--json", type=Path, help="write every row's numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = saved_recipe(args.recipe) if Path(args.recipe).is_dir() else load_recipe(args.recipe)
    if args.matched:
        matched_recipe = saved_recipe(args.matched)
        if matched_recipe.name != recipe.name:
            parser.error(f"--matched {args.matched} was trained on recipe "
                         f"{matched_recipe.name!r}, not {recipe.name!r}")
        recipe = matched_recipe  # its bookkeeping (vertex_f) is the one to match
    layers = args.steps or recipe.steps
    problem, traj = held_out(recipe, layers, args.count, args.seed)
    codec = build_codec(recipe, problem)
    threshold = recipe.eval.threshold

    rows, start = {}, time.perf_counter()
    for eps in (float(e) for e in args.eps.split(",")):
        metrics = evaluate_stack(PerturbedTeacher(codec, eps, layers), problem, traj, threshold)
        rows[f"teacher + eps {eps:g}"] = summary(metrics)
        print(f"eps {eps:g}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.matched:
        stack = load_stack(args.matched)
        stack.codec = codec
        rows["stack"] = summary(evaluate_stack(stack, problem, traj, threshold, layers, "last"))
        matched = PerturbedTeacher(codec, own_errors(stack, problem, traj, layers), layers)
        rows["teacher + the stack's own error sizes"] = summary(
            evaluate_stack(matched, problem, traj, threshold))
        print(f"matched: {time.perf_counter() - start:.0f} s", flush=True)

    print(f"{recipe.name}: {args.count} problems (seed {args.seed}), {layers} layers; normalized "
          f"error of the primary field, median over problems; breakdown threshold {threshold}")
    print(table(rows, layers))
    if args.json:
        out = {"recipe": recipe.name, "layers": layers, "problems": args.count,
               "seed": args.seed, "matched": args.matched, "rows": rows}
        write_atomic(args.json, json.dumps(to_jsonable(out), indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
