"""Block pretraining speed: Lightning against a bare PyTorch loop, FLOP/s against this
machine's matmul peak, the share of time spent making pairs, and the quickstart end to end.

    python benchmarks/training.py                 # quickstart's block 1, 2 threads
    python benchmarks/training.py --quickstart    # also time `blockwise run` on the quickstart
                                                  # and the evaluation of its stack

Both loops train the same block from the same initial weights on the same pairs, batches,
objective, optimizer, schedule and gradient clipping, in this process. They take turns an
epoch at a time (a bare epoch runs after each Lightning epoch), so the load of a shared
machine hits both alike; the ratio is the median over epochs of Lightning's steps/s over the
bare loop's, and Lightning's once-per-block setup and teardown is reported beside it.
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode

from blockwise.build import build_codec, data_splits, new_block
from blockwise.config import load_recipe
from blockwise.evaluation.stack_eval import eval_checkpoint
from blockwise.model import ReadIO
from blockwise.rollout_cache import load_or_roll_out
from blockwise.training.block_module import BlockModule, field_losses
from blockwise.training.datamodule import PairDataModule
from blockwise.training.optim import adamw_with_schedule
from blockwise.training.pretrain import block_module


def matmul_peak(dtype=torch.float32, size=1024) -> float:
    a = torch.randn(size, size, dtype=dtype)
    a @ a
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


class BareLoop:
    """The same training written as a plain PyTorch loop: the module's objective, AdamW with
    the same per-step schedule, the same gradient clipping, on its own copy of the block."""

    def __init__(self, module: BlockModule, loader, total_steps: int, clip: float):
        self.module, self.loader, self.clip, self.epochs = module, loader, clip, 0
        cfg = adamw_with_schedule(
            module.block.parameters(),
            module.lr,
            module.weight_decay,
            module.schedule,
            module.warmup_steps,
            total_steps,
        )
        self.opt, self.schedule = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]

    def epoch(self) -> float:
        """One pass over the loader; returns its wall time in seconds."""
        start = time.perf_counter()
        self.loader.sampler.set_epoch(self.epochs)  # Lightning's batches, in Lightning's order
        self.epochs += 1
        with torch.enable_grad():
            for batch in self.loader:
                loss = self.module.loss(batch)[0]
                self.opt.zero_grad()
                loss.backward()
                if self.clip:
                    torch.nn.utils.clip_grad_norm_(self.module.block.parameters(), self.clip)
                self.opt.step()
                self.schedule.step()
        return time.perf_counter() - start


class Interleaved(Callback):
    """Runs one bare-loop epoch after each Lightning epoch, in the same process, so that the
    machine's changing load hits both alike; a Lightning epoch is timed from the end of the
    previous bare epoch, so it includes Lightning's work between epochs."""

    def __init__(self, bare: BareLoop):
        self.bare, self.lightning_s, self.bare_s = bare, [], []
        self._mark = None

    def on_train_epoch_start(self, trainer, module) -> None:
        if self._mark is None:
            self._mark = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.lightning_s.append(time.perf_counter() - self._mark)
        self.bare_s.append(self.bare.epoch())
        self._mark = time.perf_counter()


def compare(make_module, dm, epochs: int, clip: float) -> tuple[Interleaved, float]:
    """Lightning and the bare loop, epoch by epoch, each on a module from `make_module()`;
    returns the timings and the fit's wall time outside all epochs (Trainer setup and
    teardown, paid once per block)."""
    steps = epochs * len(dm.train_dataloader())
    timer = Interleaved(BareLoop(make_module(), dm.train_dataloader(), steps, clip))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=clip or None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(make_module(), datamodule=dm)
    fixed = time.perf_counter() - start - sum(timer.lightning_s) - sum(timer.bare_s)
    return timer, fixed


def step_flops(module: BlockModule, batch) -> int:
    with FlopCounterMode(display=False) as counter:
        pred = module.predict_fields(batch["tokens"])
        sum(field_losses(pred, batch["targets"]).values()).backward()
    module.block.zero_grad()
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/quickstart.yaml")
    p.add_argument("--epochs", type=int, default=10)
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
    steps_per_epoch = len(loader)

    block = new_block(recipe, 1)
    readio = ReadIO(codec.token_dim, recipe.block.width)
    tc = recipe.train

    def make_module() -> BlockModule:
        """Block 1 as the recipe trains it, from the same initial weights every time."""
        return block_module(recipe, 1, copy.deepcopy(block), readio, codec)

    flops = step_flops(make_module(), next(iter(loader)))
    timer, fixed = compare(make_module, dm, args.epochs, tc.grad_clip)
    # The first pair also pays one-time warm-up (allocator, kernels), on Lightning's side.
    bare_s, lightning_s = timer.bare_s[1:], timer.lightning_s[1:]
    ratios = sorted(b / t for b, t in zip(bare_s, lightning_s, strict=True))
    bare_rate = steps_per_epoch / statistics.median(bare_s)
    lit_rate = steps_per_epoch / statistics.median(lightning_s)
    peak = matmul_peak()
    print(
        f"{recipe.name}, block 1: {len(dm.pairs['train'])} train pairs, batch "
        f"{recipe.train.batch_size}, {steps_per_epoch} steps an epoch, {args.epochs} epochs "
        f"each, interleaved, the first pair left out, {torch.get_num_threads()} threads"
    )
    print(f"bare loop   {bare_rate:8.1f} steps/s (median epoch)")
    print(f"Lightning   {lit_rate:8.1f} steps/s (median epoch)")
    print(
        f"ratio       {statistics.median(ratios):.2f} median over epochs "
        f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}); Trainer setup and teardown "
        f"{fixed:.2f} s once per block = {fixed / sum(timer.lightning_s):.1%} of its epochs"
    )
    print(
        f"FLOP/s      {flops * bare_rate / 1e9:8.2f} GFLOP/s achieved ({flops / 1e6:.2f} "
        f"MFLOP per step) vs {peak / 1e9:.1f} GFLOP/s float32 matmul peak "
        f"= {flops * bare_rate / peak:.1%}"
    )
    one_block = making + fixed + sum(timer.lightning_s) * recipe.train.max_epochs / args.epochs
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
                *(a for o in args.overrides for a in ("--set", o)),
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
