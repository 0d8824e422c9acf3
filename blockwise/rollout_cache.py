"""Teacher rollouts for one data split, cached on disk by a hash of what determines them.

A split is (problem family and settings, dimension, count, seed) and a teacher with its
settings, rolled out for K steps from x0 = minimizer + U(-r, r)^n. Everything that changes the
trajectory goes into the cache key, so a stale cache cannot be read; the files are
safetensors (no pickles), written whole or not at all (`files.write_atomic`). A cached file
that cannot be read (damaged on disk, or not written by this code) is set aside with a
warning and the split rolled out again: a cache is never a reason to stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import load_file, save_file

from blockwise import problems, teachers
from blockwise.files import write_atomic
from blockwise.problems import Problem
from blockwise.rollout import Trajectory, rollout

CACHE_FORMAT = 1  # bump when the layout or the meaning of cached files changes


@dataclasses.dataclass(frozen=True)
class Split:
    """Everything that determines one split's rollouts."""

    family: str
    dim: int
    problem_settings: dict[str, Any]
    count: int
    seed: int
    x0_radius: float
    teacher: str
    teacher_settings: dict[str, Any]
    steps: int

    def problem(self) -> Problem:
        return problems.make(self.family, self.count, self.dim, self.seed, **self.problem_settings)

    def key(self) -> str:
        blob = json.dumps(
            {**dataclasses.asdict(self), "format": CACHE_FORMAT}, sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_or_roll_out(
    split: Split, cache_dir: str | Path | None, device: torch.device | str = "cpu"
) -> tuple[Problem, Trajectory]:
    """The split's problems and float64 trajectory, from the cache or made (on `device`)."""
    problem = split.problem()
    # The device is part of the key: CPU and GPU arithmetic round differently.
    name = f"rollout-{split.key()}-{torch.device(device).type}.safetensors"
    path = Path(cache_dir) / name if cache_dir else None
    if path is not None and path.exists():
        try:
            return problem, _read(path)
        except (safetensors.SafetensorError, KeyError, OSError) as err:
            aside = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(FileNotFoundError):  # another run set it aside first
                os.replace(path, aside)
            warnings.warn(
                f"{path}: unreadable rollout cache ({err}); moved to {aside.name} and rolling "
                "the split out again", stacklevel=2,
            )
    x0 = problem.sample_x0(seed=split.seed, radius=split.x0_radius).to(device)
    teacher = teachers.make(split.teacher, **split.teacher_settings)
    traj = rollout(teacher, problem, x0, split.steps)
    traj = Trajectory(
        {k: v.cpu() for k, v in traj.states.items()},
        {k: v.cpu() for k, v in traj.extras.items()},
        traj.diverged.cpu(),
    )
    if path is not None:
        try:
            _write(path, traj, split)
        except OSError as err:
            warnings.warn(
                f"{path}: rollout cache not written ({err.strerror or err}); going on without it",
                stacklevel=2,
            )
    return problem, traj


def _write(path: Path, traj: Trajectory, split: Split) -> None:
    tensors = {f"states.{k}": v.contiguous() for k, v in traj.states.items()}
    tensors |= {f"extras.{k}": v.contiguous() for k, v in traj.extras.items()}
    tensors["diverged"] = traj.diverged.contiguous()
    metadata = {"split": json.dumps(dataclasses.asdict(split), default=str)}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _read(path: Path) -> Trajectory:
    tensors = load_file(path)
    states = {k[len("states.") :]: v for k, v in tensors.items() if k.startswith("states.")}
    extras = {k[len("extras.") :]: v for k, v in tensors.items() if k.startswith("extras.")}
    return Trajectory(states, extras, tensors["diverged"])
