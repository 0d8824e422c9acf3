"""Per-step teacher-forced error of Nelder–Mead blocks in the scale frame and the affine frame.

    python benchmarks/frames.py                       # the quickstart recipe, K = 8, CPU
    python benchmarks/frames.py --steps 5 --out /tmp/frames --set train.max_epochs=2

For each frame (`codec.frame`: scale, affine) it trains, on the quickstart's recipe and budget
(its data, epochs, lr, block), K per-step blocks (teacher pairing: block k on the teacher's
(s_{k-1}, s_k)) and one shared block (pairing "shared": the pairs of all K steps pooled, the
same epochs, so it sees K times the pairs one per-step block does), then prints the
teacher-forced normalized error of the simplex (median over the held-out test problems, p90
beside it) at every step k: block k on the teacher's s_{k-1}, and the shared block on it. The
identity ("do nothing") scores 1. Fine-tuning is off: it does not change these numbers.

Runs in this process on one thread (`torch.set_num_threads(1)`: on a busy 2-core machine
torch's two threads ran 6-9x slower), one training at a time. The trained blocks and the
rollout cache go under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from blockwise.build import build_codec, load_data
from blockwise.config import Recipe, load_recipe
from blockwise.evaluation.metrics import summarize
from blockwise.evaluation.teacher_forced import one_step_errors
from blockwise.model import Block, ReadIO
from blockwise.stack import Stack
from blockwise.training.pretrain import train_block

FRAMES = ("scale", "affine")


def recipe_for(path: str, frame: str, steps: int, out: Path, extra: list[str]) -> Recipe:
    """The recipe at `path` with K = `steps`, the frame `frame`, no fine-tuning, one thread,
    then the overrides `extra`."""
    overrides = [
        f"steps={steps}",
        f"codec.frame={frame}",
        "finetune.max_epochs=0",
        "threads=1",
        "train.workers=1",
        f"out={out / frame}",
        f"data.cache_dir={out / 'cache'}",
    ]
    return load_recipe(path, overrides + extra)


def per_step_blocks(recipe: Recipe, data: dict) -> list[Block]:
    """Blocks 1..K, block k trained on the teacher's (s_{k-1}, s_k)."""
    out = Path(recipe.out) / "per_step"
    return [train_block(recipe, k, data, out) for k in range(1, recipe.steps + 1)]


def shared_block(recipe: Recipe, data: dict) -> Block:
    """One block trained on the pairs of all K steps pooled."""
    shared = dataclasses.replace(recipe, pairing="shared")
    return train_block(shared, 1, data, Path(recipe.out) / "shared")


@torch.no_grad()
def simplex_errors(stack: Stack, data: dict) -> list[tuple[float, float]]:
    """(median, p90) of the simplex's teacher-forced error at k = 1..K on the test split."""
    problem, traj = data["test"]
    rows = []
    for k in range(1, traj.steps + 1):
        errors = one_step_errors(stack, problem, traj, k)["simplex"]
        summary = summarize(errors)
        rows.append((summary["median"], summary["p90"]))
    return rows


def measure(path: str, frame: str, steps: int, out: Path, extra: list[str]) -> dict[str, list]:
    """Both setups in one frame: setup -> per-step (median, p90), and the seconds it took."""
    start = time.perf_counter()
    recipe = recipe_for(path, frame, steps, out, extra)
    data = load_data(recipe, device="cpu")
    codec = build_codec(recipe, data["test"][0])
    readio = ReadIO(codec.token_dim, recipe.block.width)
    per_step = Stack(codec, readio, per_step_blocks(recipe, data)).eval()
    shared = Stack(codec, readio, [shared_block(recipe, data)], looped=True, depth=steps).eval()
    return {
        "per-step blocks": simplex_errors(per_step, data),
        "one shared block": simplex_errors(shared, data),
        "seconds": time.perf_counter() - start,
    }


def table(results: dict[str, dict], steps: int) -> str:
    """Markdown: one row per (setup, frame), one column per step: median (p90)."""
    head = "| setup | frame | " + " | ".join(f"k = {k}" for k in range(1, steps + 1)) + " |"
    lines = [head, "|" + " --- |" * (steps + 2)]
    for setup in ("per-step blocks", "one shared block"):
        for frame, result in results.items():
            cells = " | ".join(f"{m:.3f} ({p:.2f})" for m, p in result[setup])
            lines.append(f"| {setup} | {frame} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("/tmp/blockwise_frames"))
    parser.add_argument("--frames", default=",".join(FRAMES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override, as `blockwise run --set` takes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for frame in args.frames.split(","):
        results[frame] = measure(args.recipe, frame, args.steps, args.out, args.set)
        print(f"{frame}: {results[frame]['seconds']:.0f} s", flush=True)
    print("teacher-forced simplex error, median (p90) over test problems; identity = 1")
    print(table(results, args.steps))


if __name__ == "__main__":
    main()
