"""What both training stages share: the Lightning Trainer of a stage, resumable, and the stop
on a loss that is no longer finite.

Resume state (out/resume/<name>/last.ckpt, a Lightning checkpoint: a pickle, read only by the
run that wrote it) is written whole or not at all, in the run directory itself
(`AtomicCheckpointIO`: Lightning's own writer stages the file in TMPDIR and copies it, which a
full disk truncates). A resume file that is damaged all the same is set aside, with a message,
and the stage starts over.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from blockwise.files import write_atomic


class DivergedTraining(RuntimeError):
    """The training loss stopped being finite."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM). A BaseException, like KeyboardInterrupt, so
    that no `except Exception` on the way swallows it."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but written beside its name and renamed into place."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, buffer.getvalue())


def _usable(last: Path) -> bool:
    """Whether the resume file `last` is whole: torch.save writes a zip archive whose every
    member carries a CRC, so a truncated or damaged file fails the check."""
    try:
        with zipfile.ZipFile(last) as archive:
            return archive.testzip() is None
    except Exception:  # any damage zipfile meets: BadZipFile, EOFError, NotImplementedError
        return False


def _resume_from(last: Path) -> Path | None:
    """`last` if it exists and is whole; a damaged one is moved aside, and training starts over."""
    if not last.exists():
        return None
    if _usable(last):
        return last
    aside = last.with_name(last.name + ".corrupt")
    os.replace(last, aside)
    print(
        f"blockwise: {last} is damaged (an interrupted write, or a full disk); moved it to "
        f"{aside.name} and training this stage from its start",
        file=sys.stderr,
    )
    return None


def check_finite(loss: Tensor, name: str, step: int, section: str) -> None:
    """Stop before a non-finite loss updates any weight; the last checkpoint stays good."""
    if not torch.isfinite(loss):
        raise DivergedTraining(
            f"{name}: the training loss became {loss.item()} at step {step}; the weights were "
            "not updated with it, and the last checkpoint saved before it is kept. Lower "
            f"{section}.lr or set {section}.grad_clip."
        )


# Lightning's warnings that say nothing about a blockwise run, silenced during `fit` only.
QUIET = (
    # Resuming reuses the resume directory on purpose.
    "Checkpoint directory .* exists and is not empty",
    # The loaders index tensors already in memory, a whole batch per fetch (batches.py):
    # worker processes would only add pickling.
    ".* does not have many workers",
    # An epoch shorter than the logging interval is logged at its end anyway.
    "The number of training batches .* is smaller than the logging interval",
    # Lightning 2.6's own use of torch's pytree (torch >= 2.10 deprecates LeafSpec).
    r".*isinstance\(treespec, LeafSpec\)",
)


def _every_epoch(resume: Path) -> ModelCheckpoint:
    """Writes resume/last.ckpt at every epoch's end, replacing the previous one whole
    (`AtomicCheckpointIO`).

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
    """Train `module` with the settings `tc` (recipe.train or recipe.finetune, a StageConfig)
    into out/logs/<name>, saving out/resume/<name>/last.ckpt every epoch and resuming from it
    if it exists."""
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
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        log_every_n_steps=tc.log_every_n_steps,
        default_root_dir=out,
    )
    with warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_from(resume / "last.ckpt"))
        except SIGTERMException:
            # Lightning's own SIGTERM handler ends the fit with SystemExit(None), i.e. status 0.
            raise Terminated from None
        except SystemExit as exit_:
            # Lightning turns Ctrl-C (or our Terminated) into exit(1) after its own teardown;
            # hand the caller the interrupt itself so that it can say how to resume.
            if isinstance(exit_.__context__, (KeyboardInterrupt, Terminated)):
                raise exit_.__context__ from None
            raise
