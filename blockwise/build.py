"""What a recipe names, built: its data splits and their rollouts, its codec, its blocks.

These factories sit below training, evaluation and plots, which all need them, so that none of
those packages imports another to build a recipe's objects.

    data = load_data(recipe)                  # {"train"|"val"|"test": (problems, trajectory)}
    codec = build_codec(recipe, data["train"][0])
    block = new_block(recipe, layer=1)        # the seeded initial weights of block 1
"""

from __future__ import annotations

import torch

from blockwise import teachers
from blockwise.codec import Codec, make_codec
from blockwise.config import Recipe
from blockwise.model import Block
from blockwise.problems import Problem
from blockwise.rollout_cache import Split, load_or_roll_out

SPLITS = ("train", "val", "test")


def data_splits(recipe: Recipe) -> dict[str, Split]:
    """The train / val / test splits: same family and teacher, disjoint seeds."""
    d = recipe.data
    counts = {"train": d.train_problems, "val": d.val_problems, "test": d.test_problems}
    seeds = {"train": d.train_seed, "val": d.val_seed, "test": d.test_seed}
    return {
        name: Split(
            recipe.problem.family,
            recipe.problem.dim,
            dict(recipe.problem.settings),
            counts[name],
            seeds[name],
            recipe.problem.x0_radius,
            recipe.teacher.name,
            dict(recipe.teacher.settings),
            recipe.steps,
        )
        for name in SPLITS
    }


def rollout_device(recipe: Recipe) -> torch.device:
    """Where rollouts are made: the training accelerator's device when it is a GPU."""
    accelerator = recipe.train.accelerator
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


def load_data(recipe: Recipe, device: str | torch.device | None = None) -> dict[str, tuple]:
    """(problems, trajectory) per split, from the rollout cache or rolled out now (by default
    on the training device; the cache holds CPU tensors either way)."""
    device = device if device is not None else rollout_device(recipe)
    splits = data_splits(recipe)
    return {name: load_or_roll_out(s, recipe.data.cache_dir, device) for name, s in splits.items()}


def build_codec(recipe: Recipe, problem: Problem) -> Codec:
    """The recipe's codec for problems like `problem` (its family, dim and mode)."""
    teacher = teachers.make(recipe.teacher.name, **recipe.teacher.settings)
    c = recipe.codec
    return make_codec(teacher, problem, c.mode, c.frame, c.vertex_f)


def new_block(recipe: Recipe, layer: int) -> Block:
    """Block `layer` as initialized before training (seeded: this is the untrained control)."""
    torch.manual_seed(recipe.seed * 1000 + layer)
    b = recipe.block
    return Block(b.width, b.heads, b.mlp_ratio, b.norm, b.attention, b.dropout)
