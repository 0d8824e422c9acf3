"""Block pretraining speed: Lightning against a bare PyTorch loop, FLOP/s against this
machine's matmul peak, the share of time spent making pairs, and the quickstart end to end.

    python benchmarks/training.py                 # quickstart's block 1, 2 threads
    python benchmarks/training.py --quickstart    # also time `blockwise run` on the quickstart
                                                  # and the evaluation of its stack

Both loops train the same block on the same pairs with the same batches and optimizer, in
this process, one after the other; the ratio is Lightning's steps/s over the bare loop's.
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import tempfile
import time

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from blockwise.config import load_recipe
from blockwise.evaluation.stack_eval import eval_checkpoint
from blockwise.model import ReadIO
from blockwise.training.block_module import BlockModule, field_losses
from blockwise.training.datamodule import PairDataModule
from blockwise.training.pretrain import build_codec, data_splits, new_block
from blockwise.training.rollouts import load_or_roll_out


def matmul_peak(dtype=torch.float32, size=1024) -> float:
    a = torch.randn(size, size, dtype=dtype)
    a @ a
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def bare_loop(module: BlockModule, loader, epochs: int) -> tuple[float, int]:
    opt = torch.optim.AdamW(module.block.parameters(), lr=module.lr)
    # A per-step schedule, as the Lightning module has, so both do the same work.
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    steps, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            pred = module.predict_fields(batch["tokens"])
            loss = sum(field_losses(pred, batch["targets"]).values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.block.parameters(), 1.0)
            opt.step()
            schedule.step()
            steps += 1
    return time.perf_counter() - start, steps


def lightning_loop(module: BlockModule, dm, epochs: int) -> tuple[float, int]:
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - start, trainer.global_step


def step_flops(module: BlockModule, batch) -> int:
    with FlopCounterMode(display=False) as counter:
        pred = module.predict_fields(batch["tokens"])
        sum(field_losses(pred, batch["targets"]).values()).backward()
    module.block.zero_grad()
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/quickstart.yaml")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quickstart", action="store_true")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override, e.g. --set train.batch_size=256",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)

    start = time.perf_counter()
    splits = data_splits(recipe)
    data = {s: load_or_roll_out(splits[s], None) for s in ("train", "val")}
    codec = build_codec(recipe, data["train"][0])
    dm = PairDataModule(codec, data, 1, recipe.pairing, recipe.train.batch_size)
    dm.setup()
    making = time.perf_counter() - start
    loader = dm.train_dataloader()

    block = new_block(recipe, 1)
    module = BlockModule(block, ReadIO(codec.token_dim, recipe.block.width), codec)
    flops = step_flops(module, next(iter(loader)))
    readio = ReadIO(codec.token_dim, recipe.block.width)
    # Alternate the two, twice, each from the same initial block, and keep each one's best:
    # the machine's other load then hits both alike.
    bare, lit = [], []
    for _ in range(2):
        fresh = BlockModule(copy.deepcopy(block), readio, codec)
        bare.append(bare_loop(fresh, loader, args.epochs))
        lit.append(
            lightning_loop(BlockModule(copy.deepcopy(block), readio, codec), dm, args.epochs)
        )
    bare_s, bare_n = min(bare)
    lit_s, lit_n = min(lit)
    peak = matmul_peak()
    pairs = len(dm.pairs["train"])
    print(
        f"{recipe.name}, block 1: {pairs} train pairs, batch {recipe.train.batch_size}, "
        f"{args.epochs} epochs, {torch.get_num_threads()} threads"
    )
    print(f"bare loop   {bare_n / bare_s:8.1f} steps/s")
    print(
        f"Lightning   {lit_n / lit_s:8.1f} steps/s   ratio {lit_n / lit_s / (bare_n / bare_s):.2f}"
    )
    print(
        f"FLOP/s      {flops * bare_n / bare_s / 1e9:8.2f} GFLOP/s achieved ({flops / 1e6:.2f} "
        f"MFLOP per step) vs {peak / 1e9:.1f} GFLOP/s float32 matmul peak "
        f"= {flops * bare_n / bare_s / peak:.1%}"
    )
    one_block = making + lit_s * recipe.train.max_epochs / args.epochs
    print(
        f"making pairs (rollouts + encoding, uncached) {making:.2f} s = "
        f"{making / one_block:.1%} of one block's {recipe.train.max_epochs}-epoch training"
    )

    if args.quickstart:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "blockwise",
                "run",
                args.recipe,
                "--out",
                f"{tmp}/run",
                "--set",
                f"data.cache_dir={tmp}/cache",
            ]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            wall = time.perf_counter() - start
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(
                f"quickstart  `blockwise run {args.recipe}`: {wall:.0f} s wall, "
                f"{peak_mb:.0f} MB peak resident memory"
            )
            start = time.perf_counter()
            evaluated = eval_checkpoint(f"{tmp}/run/checkpoint", problems=1024)
            print(
                f"evaluation  of its stack on {evaluated['problems']} fresh test problems "
                f"(their rollouts included): {time.perf_counter() - start:.1f} s"
            )


if __name__ == "__main__":
    main()
