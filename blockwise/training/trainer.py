"""What both training stages share: the Lightning Trainer of a stage, resumable, and the stop
on a loss that is no longer finite."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor


class DivergedTraining(RuntimeError):
    """The training loss stopped being finite."""


def check_finite(loss: Tensor, name: str, step: int, section: str) -> None:
    """Stop before a non-finite loss updates any weight; the last checkpoint stays good."""
    if not torch.isfinite(loss):
        raise DivergedTraining(
            f"{name}: the training loss became {loss.item()} at step {step}; the weights were "
            "not updated with it, and the last checkpoint saved before it is kept. Lower "
            f"{section}.lr or set {section}.grad_clip."
        )


def _every_epoch(resume: Path) -> ModelCheckpoint:
    """Writes resume/last.ckpt at every epoch's end, replacing the previous one (Lightning
    writes it through a temporary file).

    Not `save_last=True`: with nothing monitored and save_top_k=0, Lightning 2.6 writes
    last.ckpt only when training ends, which leaves nothing to resume from after a Ctrl-C.
    """
    return ModelCheckpoint(
        dirpath=resume, filename="last", save_top_k=1, enable_version_counter=False
    )


def drop_resume(out: Path, name: str) -> None:
    """Delete out/resume/<name> once what it trains is saved for good: a finished stage is
    its saved file, and deleting that file should mean training again, not restoring."""
    shutil.rmtree(Path(out) / "resume" / name, ignore_errors=True)


def fit(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    tc,
    out: Path,
    name: str,
    callbacks: list[Callback] = (),
) -> None:
    """Train `module` with the settings `tc` (a TrainConfig) into out/logs/<name>, saving
    out/resume/<name>/last.ckpt every epoch and resuming from it if it exists."""
    resume = Path(out) / "resume" / name
    trainer = L.Trainer(
        max_epochs=tc.max_epochs,
        accelerator=tc.accelerator,
        devices=tc.devices,
        strategy=tc.strategy,
        precision=tc.precision,
        deterministic=tc.deterministic,
        gradient_clip_val=tc.grad_clip or None,
        logger=CSVLogger(Path(out) / "logs", name=name),
        callbacks=[_every_epoch(resume), *callbacks],
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        log_every_n_steps=tc.log_every_n_steps,
        default_root_dir=out,
    )
    last = resume / "last.ckpt"
    with warnings.catch_warnings():
        # Resuming reuses the directory on purpose; Lightning would warn that it is not empty.
        warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=last if last.exists() else None)
        except SystemExit as exit_:
            # Lightning turns Ctrl-C into exit(1) after its own teardown; hand the caller the
            # interrupt itself so that it can say how to resume.
            if isinstance(exit_.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            raise
