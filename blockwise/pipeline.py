"""`blockwise run`: a recipe from rollouts to measured blocks, resumable, never clobbering.

Stages (each skipped when its output already exists, so an interrupted run resumes):
    rollouts (cached by content hash) -> per-block pretraining -> per-block teacher-forced
    errors with controls -> metrics.json and a plot of them (pretrain_errors.png/.pdf).
The output directory holds the resolved recipe (`recipe.yaml`); a directory holding another
recipe, or anything else, is refused unless `force` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from blockwise.config import Recipe, dump_recipe
from blockwise.evaluation.teacher_forced import format_table, teacher_forced_errors
from blockwise.model import ReadIO
from blockwise.plots import plot_pretrain_errors, save
from blockwise.training.pretrain import build_codec, load_data, new_block, pretrain


class OutputDirError(Exception):
    """The output directory cannot be used as asked (it holds another run)."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_out(recipe: Recipe, force: bool = False) -> tuple[Path, bool]:
    """The run directory, made or checked; returns (path, finished).

    An existing directory is resumed if it holds this very recipe, refused if it holds
    anything else, and emptied first only with `force`.
    """
    out = Path(recipe.out)
    resolved = dump_recipe(recipe)
    saved = out / "recipe.yaml"
    if out.exists() and any(out.iterdir()):
        same = saved.exists() and saved.read_text() == resolved
        if force:
            shutil.rmtree(out)
        elif not same:
            what = "a different recipe" if saved.exists() else "files that are not a blockwise run"
            raise OutputDirError(
                f"{out} already holds {what}; pass --force to replace it, or --out DIR"
            )
        else:
            return out, (out / "metrics.json").exists()
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(saved, resolved)
    return out, False


def run(recipe: Recipe, force: bool = False, log=print) -> dict:
    """Run the recipe's stages under recipe.out; returns the metrics."""
    out, finished = prepare_out(recipe, force)
    if finished:
        log(f"{out} is a finished run of this recipe; nothing to do (--force to redo it)")
        return json.loads((out / "metrics.json").read_text())
    start = time.perf_counter()
    data = load_data(recipe)
    made = time.perf_counter() - start
    log(
        f"rollouts: {', '.join(f'{k} {len(v[1].diverged[0])}' for k, v in data.items())} "
        f"problems, {recipe.steps} steps ({made:.1f} s)"
    )
    blocks = pretrain(recipe, out, data, log=log)
    problem, traj = data["test"]
    codec = build_codec(recipe, problem)
    readio = ReadIO(codec.token_dim, recipe.block.width)
    untrained = [new_block(recipe, k) for k in range(1, recipe.steps + 1)]
    rows = teacher_forced_errors(codec, readio, problem, traj, blocks, untrained)
    metrics = {
        "recipe": recipe.name,
        "pretrain": {"teacher_forced": rows},
        "seconds": {"rollouts": made, "total": time.perf_counter() - start},
        "torch": torch.__version__,
    }
    log("teacher-forced normalized error per block (median [p10, p90]; identity = 1):")
    log(format_table(rows))
    figure = plot_pretrain_errors(rows, title=recipe.name)
    paths = save(figure, out / "pretrain_errors")
    _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    log(f"wrote {out / 'metrics.json'}, {', '.join(str(p) for p in paths)}")
    return metrics
