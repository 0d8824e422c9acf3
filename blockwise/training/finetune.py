"""End-to-end fine-tuning of a stack: a thin LightningModule around `Stack`.

The stack runs from the teacher's s_0, each layer encoding the *emulated* state in its own
frame (so the loss sees the errors that compound), and layer k's prediction is compared with
the teacher's s_k: by default through log(1 + e^2), e the normalized emulation error of
`blockwise.errors` on the decoded state, the one passed on and evaluated (the teacher's own move is
the unit, so every problem and layer weighs alike, and the logarithm keeps problems that went
astray from dominating), or by the squared error of the output fields in the emulated state's
frame (pretraining's loss). Or the teacher is left behind ("optimize"): layer k's loss is the
objective itself at the decoded incumbent, as log of the optimality gap relative to s_0's, so
the stack may find a better optimizer than the one it was pretrained to copy (von Oswald et
al. 2023, Fig. 3: K trained layers beat K steps of GD and match GD++). At every layer (deep
supervision, layer k weighted ratio^(k-1)) or at the last one only. The layers' losses add
up as they are, or as their logs ("balance_layers"): a plain sum lets a small relative gain
at deep layers, whose errors are large, buy a large relative loss at an early, near-exact
layer (GD: layer 1 went 200x worse for 20% at layers 2-4); a sum of logs weighs a relative
change alike at every layer. Blocks may be frozen for a first phase in which only the shared
read-in/read-out train (Lightning's `BaseFinetuning`). The looped baseline is the same module
around a stack of one block applied K times.
"""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import Tensor
from torch.utils.data import DataLoader

from blockwise.optimality import optimum
from blockwise.problems import Problem, evaluate
from blockwise.rollout import Trajectory
from blockwise.stack import Stack
from blockwise.training.batches import batch_loader
from blockwise.training.block_module import field_losses, log_normalized_loss
from blockwise.training.optim import adamw_with_schedule
from blockwise.training.trainer import check_finite, fit


@dataclasses.dataclass
class RolloutBatch:
    """Some problems and their teacher trajectories: states field -> (K+1, b, ...)."""

    problem: Problem
    states: dict[str, Tensor]

    def state(self, k: int) -> dict[str, Tensor]:
        return {name: value[k] for name, value in self.states.items()}


class Rollouts:
    """Index-able problems of one split whose teacher trajectory never diverged."""

    def __init__(self, problem: Problem, traj: Trajectory):
        self.keep = (~traj.diverged.any(0)).nonzero().flatten()
        self.problem, self.traj = problem, traj

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: list[int]) -> RolloutBatch:
        rows = self.keep[torch.as_tensor(index)]
        states = {name: value[:, rows] for name, value in self.traj.states.items()}
        return RolloutBatch(self.problem[rows], states)


class RolloutDataModule(L.LightningDataModule):
    """Train and validation rollouts, in batches of whole trajectories."""

    def __init__(self, splits: dict[str, tuple[Problem, Trajectory]], batch_size: int, seed: int):
        super().__init__()
        self.sets = {name: Rollouts(*splits[name]) for name in ("train", "val")}
        self.batch_size, self.seed = batch_size, seed

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        return batch_loader(
            self.sets[name], self.batch_size, shuffle, self.seed, collate_fn=lambda b: b
        )

    def transfer_batch_to_device(self, batch: RolloutBatch, device, dataloader_idx: int):
        states = {k: v.to(device, non_blocking=True) for k, v in batch.states.items()}
        return RolloutBatch(batch.problem, states)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)


class FreezeBlocks(BaseFinetuning):
    """Blocks frozen for the first `epochs` epochs, then trained with the rest.

    The optimizer holds the blocks' parameters from the start (a frozen one has no gradient,
    so AdamW skips it); unfreezing adds no parameter group, which a per-step LR schedule,
    built for the groups it was given, could not follow."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def freeze_before_training(self, pl_module: StackModule) -> None:
        self.freeze(pl_module.stack.blocks, train_bn=False)

    def finetune_function(self, pl_module: StackModule, epoch: int, optimizer) -> None:
        # ">=": a run resumed past the frozen phase freezes again at setup, then thaws here.
        if epoch >= self.epochs:
            self.make_trainable(pl_module.stack.blocks)


GAP_FLOOR = 1e-12
"""Relative optimality gaps below this count as solved: it keeps log finite where a stack
reaches f* exactly, far below what a float32 block resolves (f ~ |x - x*|^2, ~1e-14)."""


def log_gap_loss(f: Tensor, f_start: Tensor, f_star: Tensor) -> Tensor:
    """Mean over problems of log(max(f - f*, 0) / (f_0 - f*) + GAP_FLOOR), f (B,) the
    objective at the stack's incumbent, f_0 (B,) at s_0, f* (B,) the optimum. Problems that
    start at f* are left out. 0 = no progress, -log(10) per decade of the gap closed.

    The log weighs every problem by its relative progress (like the progress ratio of
    `evaluation.stack_eval`), so the problems GD barely moves count as much as the easy ones.
    Below f* (a stack beating the teacher's best, where f* is that) there is nothing to gain and
    no gradient. A non-finite f scores the largest finite loss, so a blow-up stays a loss."""
    start = f_start - f_star
    moved = start > 0
    gap = (f - f_star).clamp(min=0) / torch.where(moved, start, 1.0)
    big = torch.finfo(gap.dtype).max
    loss = torch.log(torch.where(gap.isfinite(), gap, big).clamp(max=big) + GAP_FLOOR)
    return torch.where(moved, loss, 0.0).sum() / moved.sum().clamp(min=1)


OBJECTIVES = ("log_normalized", "frame_mse", "optimize")

BALANCE_FLOOR = 1e-30
"""Added to a layer's loss before its log under balance_layers, so an exact layer (loss 0)
stays finite; far below float32's resolution of a normalized error squared (~1e-14)."""


class StackModule(L.LightningModule):
    """Trains a stack end to end against the teacher's trajectory.

    Args:
        stack: the stack (its blocks train; its read-in/read-out only with `train_readio`).
        loss_weights: state field -> weight (fields not named weigh 1).
        supervision: "every_layer" or "last".
        layer_weight_ratio: layer k's weight is ratio^(k-1) under every_layer supervision.
        lr, weight_decay, schedule, warmup_steps: as in `BlockModule`.
        train_readio: train the shared read-in/read-out too.
        name: used in messages.
        objective: "log_normalized", "frame_mse" or "optimize" (see the module's
            docstring); `optimize` scores no field, so loss_weights do not apply to it.
        balance_layers: add up the layers' log losses (see the module's docstring); not with
            `optimize`, whose layer losses are logs already.
    """

    def __init__(
        self,
        stack: Stack,
        loss_weights: dict[str, float] | None = None,
        supervision: str = "every_layer",
        layer_weight_ratio: float = 1.0,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        train_readio: bool = False,
        name: str = "stack",
        objective: str = "log_normalized",
        balance_layers: bool = False,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
        if balance_layers and objective == "optimize":
            raise ValueError(
                "balance_layers: the optimize objective's layer losses are logs "
                "already (and negative); balance an emulation objective"
            )
        if supervision not in ("every_layer", "last"):
            raise ValueError(f"supervision: expected every_layer or last, got {supervision!r}")
        self.stack, self.objective, self.balance_layers = stack, objective, balance_layers
        self.train_readio = train_readio
        self.stack.readio.requires_grad_(train_readio)
        fields = stack.codec.learned_fields
        self.weights = {f: float((loss_weights or {}).get(f, 1.0)) for f in fields}
        depth = stack.depth
        if supervision == "last":
            self.layer_weights = [0.0] * (depth - 1) + [1.0]
        else:
            self.layer_weights = [layer_weight_ratio ** (k - 1) for k in range(1, depth + 1)]
        self.lr, self.weight_decay = lr, weight_decay
        self.schedule, self.warmup_steps, self.name = schedule, warmup_steps, name

    def layer_losses(self, batch: RolloutBatch) -> list[Tensor]:
        """The loss of each layer k = 1..K on a batch, run from the teacher's s_0."""
        codec, readio = self.stack.codec, self.stack.readio
        dtype = readio.read_in.weight.dtype
        state, losses = batch.state(0), []
        if self.objective == "optimize":
            f_star = self._f_star(batch)
            f_start = self._f(batch.problem, state)
        for k in range(1, self.stack.depth + 1):
            enc = codec.encode(state, batch.problem)
            tokens = readio.layer(self.stack.block(k), enc.tokens.to(dtype)).to(enc.tokens.dtype)
            decoded = codec.decode(tokens, enc)
            if self.objective == "optimize":
                losses.append(log_gap_loss(self._f(batch.problem, decoded), f_start, f_star))
            else:
                losses.append(self._emulation_loss(batch, k, tokens, enc, decoded))
            state = decoded
        return losses

    def _emulation_loss(self, batch: RolloutBatch, k: int, tokens: Tensor, enc, decoded) -> Tensor:
        """Layer k's distance from the teacher's s_k: of its output tokens (B, T, D) in the
        frame of `enc` (frame_mse), or of the `decoded` state (log_normalized)."""
        codec = self.stack.codec
        if self.objective == "frame_mse":
            target = codec.to_frame(batch.state(k), enc.frame)
            per_field = field_losses(codec.read(tokens), target)
        else:
            # The state passed on and evaluated: decoded (a simplex re-sorted best first).
            target, prev = batch.state(k), batch.state(k - 1)
            per_field = {
                f: log_normalized_loss(decoded[f], target[f], prev[f]) for f in codec.learned_fields
            }
        return sum(self.weights[f] * v for f, v in per_field.items())

    def _f(self, problem: Problem, state: dict[str, Tensor]) -> Tensor:
        """(B,) f at the state's incumbent, in the problem's float64: near f* a float32 f
        would lose the gap to cancellation."""
        x = self.stack.codec.teacher.incumbent(state).to(problem.params_dtype)
        return evaluate(problem, x[:, None, :])[:, 0]

    def _f_star(self, batch: RolloutBatch) -> Tensor:
        """(B,) f*, as evaluation takes it: f at the family's minimizer, else the teacher's
        best; from float64 states, for the reason of `_f`."""
        wide = batch.problem.params_dtype
        states = {k: v.to(wide) if v.is_floating_point() else v for k, v in batch.states.items()}
        steps = len(next(iter(states.values())))
        # Rollouts hold only problems whose trajectory never diverged.
        never = torch.zeros(steps, batch.problem.batch_size, dtype=torch.bool)
        return optimum(batch.problem, self.stack.codec.teacher, Trajectory(states, {}, never))

    def total_loss(self, losses: list[Tensor]) -> Tensor:
        """The layers' losses (scalars), weighted and added up, or their logs added up."""
        if self.balance_layers:
            losses = [torch.log(x + BALANCE_FLOOR) for x in losses]
        return sum(w * x for w, x in zip(self.layer_weights, losses, strict=True))

    def _step(self, batch: RolloutBatch, stage: str) -> Tensor:
        losses = self.layer_losses(batch)
        loss = self.total_loss(losses)
        size = len(batch.states[next(iter(batch.states))][0])
        if stage == "val" or self.global_step % self.trainer.log_every_n_steps == 0:
            # Logged only when the logger writes: each self.log drags Lightning's result
            # collection through a device move, about a small block's step in time.
            self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size)
        if stage == "val":
            for k, layer_loss in enumerate(losses, start=1):
                self.log(f"val/loss_layer_{k:02d}", layer_loss, batch_size=size)
        return loss

    def training_step(self, batch: RolloutBatch, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        check_finite(loss, self.name, self.global_step, "finetune")
        return loss

    def validation_step(self, batch: RolloutBatch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        trained = [*self.stack.blocks.parameters()]
        if self.train_readio:
            trained += [*self.stack.readio.parameters()]
        return adamw_with_schedule(
            trained,
            self.lr,
            self.weight_decay,
            self.schedule,
            self.warmup_steps,
            int(self.trainer.estimated_stepping_batches),
        )


def train_stack(recipe, stack: Stack, data: dict, out, name: str) -> Stack:
    """Fine-tune `stack` with recipe.finetune on the train split, resuming from
    out/resume/<name>/last.ckpt if an earlier run was interrupted; returns the stack."""
    fc = recipe.finetune
    module = StackModule(
        stack.train(),  # its blocks may come from an evaluation, in eval mode
        dict(fc.loss_weights),
        fc.supervision,
        fc.layer_weight_ratio,
        fc.lr,
        fc.weight_decay,
        fc.schedule,
        fc.warmup_steps,
        fc.train_readio,
        name=name,
        objective=fc.objective,
        balance_layers=fc.balance_layers,
    )
    callbacks = [FreezeBlocks(fc.freeze_blocks_epochs)] if fc.freeze_blocks_epochs else []
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    dm = RolloutDataModule({s: data[s] for s in ("train", "val")}, fc.batch_size, recipe.seed)
    fit(module, dm, fc, out, name, callbacks)
    return stack.eval()
