"""Training one block alone: a thin LightningModule around a plain `Block`.

The block sits between the stack's shared read-in and read-out (frozen during pretraining, so
that blocks trained apart still compose), maps an encoded state s_{k-1} to tokens, and the
codec reads the predicted learned fields out of them. The loss is the weighted sum over
fields of the mean squared error in the input state's frame ("frame_mse"), or of the mean of
log(1 + (e / scale)^2) over pairs, e a pair's normalized error ("log_normalized"); with
`set_fields` (the codec's `vertex_set`, under `train.set_loss`) the output points are first
matched to the target's in the order that makes the squared error least, per example.
"""

from __future__ import annotations

import itertools
import math

import lightning as L
import torch
from torch import Tensor

from blockwise.codec.base import MAX_SET_ORDERS
from blockwise.errors import normalized_error
from blockwise.model import Block, ReadIO
from blockwise.training.optim import adamw_with_schedule
from blockwise.training.trainer import check_finite


def field_losses(pred: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mean squared error per field; each tensor (M, ...)."""
    return {name: ((pred[name] - target[name]) ** 2).mean() for name in target}


def log_normalized_loss(pred: Tensor, target: Tensor, prev: Tensor, scale: float = 1.0) -> Tensor:
    """Mean over problems of log(1 + (e / scale)^2), e = ||pred - target|| / ||target - prev||
    the normalized error of `blockwise.errors`; inputs (B, ...). Problems whose teacher
    did not move (e undefined) are left out; with none left the loss is 0.

    The gradient of a problem's term peaks at e = scale and falls as 2 / e above it, so the
    few far off (a wrong branch) pull little and the many close ones decide; a problem that
    barely moved has a small denominator, so its miss pulls hard.

    Written with squared norms rather than through `errors.normalized_error`, whose norm has
    no gradient at a perfect prediction and which marks undefined rows with NaN."""
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    move2 = (flat(target) - flat(prev)).square().sum(1) * scale**2
    miss2 = (flat(pred) - flat(target)).square().sum(1)
    moved = move2 > 0
    # Clamped so that a ratio past the float range stays a large, finite loss.
    ratio = (miss2 / torch.where(moved, move2, 1.0)).clamp(max=torch.finfo(miss2.dtype).max)
    return torch.where(moved, torch.log1p(ratio), 0.0).sum() / moved.sum().clamp(min=1)


def matched_to_set(
    pred: dict[str, Tensor], target: dict[str, Tensor], fields: tuple[str, ...],
    weights: dict[str, float],
) -> dict[str, Tensor]:
    """`pred` with the m points on axis 1 of `fields` (each (M, m, ...), permuted together)
    put, per example, in the order that makes the weighted mean squared error against `target`
    least: the order `field_losses` would score if a block's output order were free."""
    points = target[fields[0]].shape[1]
    if math.factorial(points) > MAX_SET_ORDERS:
        raise ValueError(f"set loss: {points} points have more than {MAX_SET_ORDERS} orders")
    device = pred[fields[0]].device
    orders = torch.tensor(list(itertools.permutations(range(points))), device=device)  # (m!, m)
    cost = 0.0
    for f in fields:
        ordered = pred[f][:, orders]  # (M, m!, m, ...): every order of each example's points
        miss = (ordered - target[f][:, None]) ** 2
        # As field_losses weighs it: the mean over the field's elements of one example.
        cost = cost + weights[f] * miss.flatten(2).mean(dim=2)  # (M, m!)
    best = orders[cost.argmin(dim=1)]  # (M, m)
    return {
        f: (v.gather(1, best.view(best.shape + (1,) * (v.ndim - 2)).expand_as(v))
            if f in fields else v)
        for f, v in pred.items()
    }


class BlockModule(L.LightningModule):
    """Trains `block` on one-step pairs; the codec and read-in/out are not trained here.

    Args:
        block: the block to train.
        readio: the stack's shared read-in/read-out (its parameters are frozen).
        codec: reads the learned fields out of output tokens.
        loss_weights: field -> weight (fields not named weigh 1).
        lr, weight_decay: AdamW settings.
        schedule: "constant" or "cosine" (decay to 0 over the run), after `warmup_steps`
            of linear warm-up.
        name: used in messages ("block 3").
        set_fields: learned fields whose points (axis 1) are scored as a set
            (`matched_to_set`); empty scores them in order.
        objective: "frame_mse" (`field_losses`) or "log_normalized"
            (`log_normalized_loss` with `error_scale`).
    """

    def __init__(
        self,
        block: Block,
        readio: ReadIO,
        codec,
        loss_weights: dict[str, float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        name: str = "block",
        set_fields: tuple[str, ...] = (),
        objective: str = "frame_mse",
        error_scale: float = 1.0,
    ):
        super().__init__()
        if objective not in ("frame_mse", "log_normalized"):
            raise ValueError(f"{name}: objective {objective!r}, expected frame_mse or "
                             "log_normalized")
        self.block, self.readio, self.codec = block, readio, codec
        self.readio.requires_grad_(False)
        self.weights = {f: float((loss_weights or {}).get(f, 1.0)) for f in codec.learned_fields}
        self.lr, self.weight_decay = lr, weight_decay
        self.schedule, self.warmup_steps, self.name = schedule, warmup_steps, name
        self.set_fields = tuple(set_fields)
        self.objective, self.error_scale = objective, error_scale

    def forward(self, tokens: Tensor) -> Tensor:
        """Encoded inputs (B, T, D) -> output tokens (B, T, D)."""
        return self.readio.layer(self.block, tokens)

    def predict_fields(self, tokens: Tensor) -> dict[str, Tensor]:
        return self.codec.read(self(tokens))

    def loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The training objective on a batch: (weighted loss, per-field losses, predictions)."""
        pred = self.predict_fields(batch["tokens"])
        if self.set_fields:
            pred = matched_to_set(pred, batch["targets"], self.set_fields, self.weights)
        if self.objective == "log_normalized":
            losses = {
                f: log_normalized_loss(pred[f], t, batch["previous"][f], self.error_scale)
                for f, t in batch["targets"].items()
            }
        else:
            losses = field_losses(pred, batch["targets"])
        return sum(self.weights[f] * v for f, v in losses.items()), losses, pred

    def _step(self, batch: dict, stage: str) -> Tensor:
        loss, losses, pred = self.loss(batch)
        size = batch["tokens"].shape[0]
        if stage == "val" or self.global_step % self.trainer.log_every_n_steps == 0:
            # Logged only when the logger writes: each self.log drags Lightning's result
            # collection through a device move, about a small block's step in time.
            self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size)
        if stage == "val":
            # Per-field figures only here: a self.log costs about as much as a small block's
            # step, so the training loop logs the loss alone.
            for f, v in losses.items():
                self.log(f"val/loss_{f}", v, batch_size=size)
                err = normalized_error(pred[f], batch["targets"][f], batch["previous"][f])
                self.log(f"val/error_{f}", err.nanmedian(), batch_size=size)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        check_finite(loss, self.name, self.global_step, "train")
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        return adamw_with_schedule(
            [p for p in self.block.parameters() if p.requires_grad],
            self.lr,
            self.weight_decay,
            self.schedule,
            self.warmup_steps,
            int(self.trainer.estimated_stepping_batches),
        )
