"""`blockwise run`: a recipe from rollouts to measured blocks, resumable, never clobbering.

Stages (each skipped when its output already exists, so an interrupted run resumes):
    rollouts (cached by content hash) -> per-block pretraining -> per-block teacher-forced
    errors with controls -> the stack evaluated (teacher-forced and rollout error per layer,
    breakdown depth, progress; an untrained stack beside it) -> end-to-end fine-tuning and the
    looped baseline, evaluated the same way -> checkpoints (`checkpoint/` holds the final
    stack; `finetuned/`, `looped/`) -> metrics.json -> plots (`plots/`, pretrain_errors).
The output directory (`rundir`) is a blockwise run: marked, locked while the run lasts, holding
the resolved recipe (`recipe.yaml`); a run of another recipe is replaced only with `force`, and
a directory that is not a run is never touched.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from blockwise.build import build_codec, load_data, new_block
from blockwise.checkpoints import load_stack, save_stack
from blockwise.config import Recipe
from blockwise.evaluation.stack_eval import evaluate_stack
from blockwise.evaluation.teacher_forced import format_table, teacher_forced_errors
from blockwise.evaluation.trade import format_trade, layer_trade
from blockwise.files import write_atomic
from blockwise.model import ReadIO
from blockwise.plots import plot_pretrain_errors, save
from blockwise.plots.runs import plot_runs
from blockwise.rundir import claim
from blockwise.stack import Stack
from blockwise.training.finetune import train_stack
from blockwise.training.pretrain import pretrain, trained_layers
from blockwise.training.trainer import drop_resume


def _stage_stack(recipe, out: Path, name: str, stack: Stack, data: dict, log) -> Stack:
    """Fine-tune `stack` as `name`, or load it if a finished run saved it as out/<name>."""
    path = out / name
    if path.exists():
        log(f"{name}: loading {path}")
        return load_stack(path)
    log(f"{name}: fine-tuning end to end for {recipe.finetune.max_epochs} epochs")
    return train_stack(recipe, stack, data, out, name)


def _rollout_table(evaluations: dict) -> str:
    """Median rollout error of the primary field per layer, one column per evaluation."""
    names = list(evaluations)
    first = evaluations[names[0]]
    primary, layers = first["primary"], first["layers"]
    lines = [f"{'layer':>5} " + " ".join(f"{n:>12}" for n in names)]
    for k in range(layers):
        cells = []
        for n in names:
            value = evaluations[n]["rollout"][primary]["median"][k]
            cells.append(f"{value:>12.3g}" if value is not None else f"{'-':>12}")
        lines.append(f"{k + 1:>5} " + " ".join(cells))
    depths = ", ".join(f"{n} {evaluations[n]['breakdown_depth']}" for n in names)
    return "\n".join(lines) + f"\nbreakdown depth (threshold {first['threshold']}): {depths}"


def run(recipe: Recipe, force: bool = False, log=print) -> dict:
    """Run the recipe's stages under recipe.out; returns the metrics."""
    with claim(recipe, force) as (out, done):
        if done:
            log(f"{out} is a finished run of this recipe; nothing to do")
            return json.loads((out / "metrics.json").read_text())
        threads = torch.get_num_threads()
        if recipe.threads is not None:
            torch.set_num_threads(recipe.threads)
        try:
            return _stages(recipe, out, log)
        finally:
            torch.set_num_threads(threads)


def _stages(recipe: Recipe, out: Path, log) -> dict:
    """Every stage not yet done in the claimed run directory `out`."""
    start = time.perf_counter()
    data = load_data(recipe)
    made = time.perf_counter() - start
    log(
        f"rollouts: {', '.join(f'{k} {len(v[1].diverged[0])}' for k, v in data.items())} "
        f"problems, {recipe.steps} steps ({made:.1f} s)"
    )
    pretrained = pretrain(recipe, out, data, log=log, controls=True)
    blocks = pretrained["trained"]
    problem, traj = data["test"]
    codec = build_codec(recipe, problem)
    readio = ReadIO(codec.token_dim, recipe.block.width)
    threshold = recipe.eval.threshold

    def stack_of(blocks: list, readio: ReadIO = readio) -> Stack:
        """A stack of copies of `blocks`: one per layer, or one looped K times if tied."""
        copies = [copy.deepcopy(b) for b in blocks]
        return Stack(codec, readio, copies, looped=recipe.tied, depth=recipe.steps)

    stacks = {
        "untrained": stack_of([new_block(recipe, k) for k in trained_layers(recipe)]),
        "stacked": stack_of(blocks),
    }
    if "shuffled" in pretrained:
        stacks["shuffled"] = stack_of(pretrained["shuffled"])
    controls = {name: stacks[name] for name in ("untrained", "shuffled") if name in stacks}
    rows = teacher_forced_errors({"trained": stacks["stacked"], **controls}, problem, traj)
    log("teacher-forced normalized error per block (median [p10, p90]; identity = 1):")
    log(format_table(rows))
    if recipe.finetune.max_epochs > 0:
        tuned = stack_of(blocks, copy.deepcopy(readio))
        stacks["finetuned"] = _stage_stack(recipe, out, "finetuned", tuned, data, log)
        # A tied stack is already one block looped: it is its own looped baseline.
        if recipe.finetune.looped and not recipe.tied:
            looped = Stack(
                codec,
                copy.deepcopy(readio),
                [copy.deepcopy(blocks[0])],
                looped=True,
                depth=recipe.steps,
            )
            stacks["looped"] = _stage_stack(recipe, out, "looped", looped, data, log)
    evaluations = {
        name: evaluate_stack(stack, problem, traj, threshold)
        for name, stack in stacks.items()
    }
    log(f"rollout normalized error of {evaluations['stacked']['primary']} per layer (median):")
    log(_rollout_table(evaluations))
    trade = None
    if "finetuned" in evaluations:
        trade = layer_trade(evaluations["stacked"], evaluations["finetuned"])
        log(format_trade(trade))
    for name in ("finetuned", "looped"):
        if name in stacks and not (out / name).exists():
            save_stack(stacks[name], recipe, out / name, evaluations[name], stage=name)
            drop_resume(out, name)
    final = "finetuned" if "finetuned" in stacks else "stacked"
    save_stack(
        stacks[final],
        recipe,
        out / "checkpoint",
        evaluations[final],
        stage=final,
    )

    metrics = {
        "recipe": recipe.name,
        "pretrain": {"teacher_forced": rows},
        "evaluations": evaluations,
        "finetune_trade": trade,
        "seconds": {"rollouts": made, "total": time.perf_counter() - start},
        "torch": torch.__version__,
    }
    paths = save(plot_pretrain_errors(rows, title=recipe.name), out / "pretrain_errors")
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    paths += plot_runs([out])
    log(
        f"wrote {out / 'metrics.json'}, {out / 'checkpoint'}, plots: "
        f"{', '.join(p.name for p in paths if p.suffix == '.png')}"
    )
    return metrics
