"""Layer-wise pretraining: each block trained alone on one teacher step, then measured.

    stacks = pretrain(recipe, out_dir, controls=True)
    stacks["trained"]   # blocks 1..K, or block 1 alone if the recipe is tied
    stacks["shuffled"]  # the same blocks trained on shuffled pairs (recipe.eval.shuffled)

Blocks are independent jobs under "teacher" and "shared" pairing (train.workers of them run at
once, in separate processes); "greedy" pairing trains them in order, each on the frozen
stack's output. A finished block is a file `blocks/block_KK.safetensors` (the shuffled
control's `blocks/shuffled_KK.safetensors`); an interrupted one resumes from Lightning's
`resume/block_KK/last.ckpt`. Nothing finished is trained again.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import active_children, get_context
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file, save_file

from blockwise.build import build_codec, load_data, new_block
from blockwise.config import Recipe, recipe_from_dict, recipe_to_dict
from blockwise.files import write_atomic
from blockwise.model import Block, ReadIO
from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.stack import Stack
from blockwise.training.block_module import BlockModule
from blockwise.training.datamodule import PairDataModule
from blockwise.training.trainer import drop_resume, fit


def trained_layers(recipe: Recipe) -> list[int]:
    """The blocks a recipe trains: one per step, or block 1 alone when tied."""
    return [1] if recipe.tied else list(range(1, recipe.steps + 1))


def job_name(layer: int, shuffled: bool = False) -> str:
    """The name of a block's files: block_KK, or shuffled_KK for the shuffled control."""
    return f"{'shuffled' if shuffled else 'block'}_{layer:02d}"


def block_path(out: Path, layer: int, shuffled: bool = False) -> Path:
    return out / "blocks" / f"{job_name(layer, shuffled)}.safetensors"


def save_block(block: Block, path: Path) -> None:
    """Atomic: a crash mid-write never leaves a file that looks like a finished block."""
    state = {k: v.contiguous() for k, v in block.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, tmp))


def load_block(recipe: Recipe, layer: int, path: Path) -> Block:
    block = new_block(recipe, layer)
    block.load_state_dict(load_file(path))
    return block


def _dtype(precision: str) -> torch.dtype:
    return torch.float64 if precision.startswith("64") else torch.float32


def block_module(
    recipe: Recipe, layer: int, block: Block, readio: ReadIO, codec, shuffled: bool = False
) -> BlockModule:
    """The LightningModule that trains `block` as block `layer` (of the shuffled control if
    `shuffled`) under recipe.train."""
    tc = recipe.train
    return BlockModule(
        block,
        readio,
        codec,
        dict(tc.loss_weights),
        tc.lr,
        tc.weight_decay,
        tc.schedule,
        tc.warmup_steps,
        name=f"{'shuffled control ' if shuffled else ''}block {layer}",
        set_fields=codec.vertex_set if tc.set_loss else (),
        objective=tc.objective,
        error_scale=tc.error_scale,
    )


def train_block(
    recipe: Recipe,
    layer: int,
    data: dict,
    out: Path,
    frozen: list[Block] | None = None,
    shuffled: bool = False,
) -> Block:
    """Train block `layer` alone and save it; `frozen` holds blocks 1..layer-1 (greedy).
    `shuffled` trains the control's block `layer`, from the same initial weights, on the
    same pairs with their targets shuffled."""
    tc = recipe.train
    problem = data["train"][0]
    codec = build_codec(recipe, problem)
    readio = ReadIO(codec.token_dim, recipe.block.width)
    dtype = _dtype(tc.precision)
    greedy = None
    if recipe.pairing == "greedy" and layer > 1 and not shuffled:
        # Copies: `.to(dtype)` converts in place, and the frozen blocks are the caller's.
        copies = [copy.deepcopy(b) for b in frozen or []]
        stack = Stack(codec, copy.deepcopy(readio), copies).to(dtype).eval()

        def greedy(split_problem: Problem, traj: Trajectory):
            with torch.no_grad():
                return stack(split_problem, traj[0], layers=layer - 1)[-1]

    dm = PairDataModule(
        codec,
        {s: data[s] for s in ("train", "val")},
        layer,
        recipe.pairing,
        tc.batch_size,
        seed=recipe.seed + layer,
        greedy_inputs=greedy,
        dtype=dtype,
        shuffled=shuffled,
    )
    block = new_block(recipe, layer).to(dtype)
    name = job_name(layer, shuffled)
    module = block_module(recipe, layer, block, readio.to(dtype), codec, shuffled)
    L.seed_everything(recipe.seed + layer, workers=True, verbose=False)
    fit(module, dm, tc, out, name)
    save_block(block.float(), block_path(out, layer, shuffled))
    drop_resume(out, name)
    return block.float()


def _job(recipe_dict: dict, layer: int, out: str, threads: int, shuffled: bool) -> str:
    """One block in a worker process: reload the data from the cache, train, save."""
    torch.set_num_threads(threads)
    recipe = recipe_from_dict(recipe_dict)
    train_block(recipe, layer, load_data(recipe), Path(out), shuffled=shuffled)
    return str(block_path(Path(out), layer, shuffled))


def _train_in_processes(recipe, todo, out, workers: int, threads: int, log) -> None:
    """Blocks `todo` in `workers` processes. A block is handed out only when a process is
    free, so after Ctrl-C or a failed block no further block starts (the executor would
    otherwise have queued one ahead). When this process is stopped (SIGTERM, an error), the
    running blocks are stopped too rather than awaited: each keeps its last epoch's resume
    checkpoint, and none goes on writing into a run directory this process no longer locks."""
    todo, running = list(todo), {}
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    try:
        while todo or running:
            while todo and len(running) < workers:
                k, shuffled = todo.pop(0)
                job = pool.submit(_job, recipe_to_dict(recipe), k, str(out), threads, shuffled)
                running[job] = k
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in done:
                del running[job]
                log(f"saved {job.result()}")
    except BaseException:
        for process in active_children():  # the pool's workers, the only children here
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def pretrain(
    recipe: Recipe, out: Path, data: dict | None = None, log=print, controls: bool = False
) -> dict[str, list[Block]]:
    """Train every block not yet saved under `out`; return them (float32) by stack:
    {"trained": [K blocks, or block 1 if tied]}, and with `controls` and recipe.eval.shuffled
    also "shuffled", the control trained on shuffled pairs. Parallel workers take the blocks
    of both stacks from one queue."""
    data = data or load_data(recipe)
    kinds = {"trained": False}
    if controls and recipe.eval.shuffled:
        kinds["shuffled"] = True
    layers = trained_layers(recipe)
    jobs = [(k, shuffled) for shuffled in kinds.values() for k in layers]
    todo = [(k, s) for k, s in jobs if not block_path(out, k, s).exists()]
    parallel = [(k, s) for k, s in todo if recipe.pairing != "greedy" or s]
    if parallel and recipe.train.workers > 1:
        workers = min(recipe.train.workers, len(parallel))
        threads = recipe.threads or max(1, (os.cpu_count() or 1) // workers)
        names = ", ".join(job_name(k, s) for k, s in parallel)
        log(f"training {names} in {workers} processes, {threads} threads each")
        _train_in_processes(recipe, parallel, out, workers, threads, log)
    stacks: dict[str, list[Block]] = {}
    for kind, shuffled in kinds.items():
        blocks = stacks[kind] = []
        for k in layers:
            path = block_path(out, k, shuffled)
            if path.exists():
                blocks.append(load_block(recipe, k, path))
                continue
            what = "shuffled control block" if shuffled else "block"
            log(f"training {what} {k} of {len(layers)} ({recipe.pairing} pairing)")
            blocks.append(train_block(recipe, k, data, out, frozen=blocks, shuffled=shuffled))
            log(f"saved {path}")
    return stacks


__all__ = [
    "block_module",
    "block_path",
    "job_name",
    "load_block",
    "pretrain",
    "save_block",
    "train_block",
    "trained_layers",
]
