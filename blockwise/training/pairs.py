"""One-step training pairs: an encoded input state and the teacher's next state in its frame.

Block k (1-indexed) learns s_{k-1} -> s_k. Its input is the teacher's s_{k-1} ("teacher"
pairing), the output of the frozen blocks 1..k-1 run from s_0 ("greedy"), or, with "shared"
pairing, every step of the trajectory pooled, so that each block learns the same map. The
target is always the teacher's s_k, expressed in the frame of the input state, which is
where the loss is taken. Problems whose trajectory diverged by step k are left out.

The shuffled control (a control task, Hewitt & Liang 2019) keeps every input and draws its
target from another pair of the same step, in that pair's own frame: the targets keep their
distribution and lose their relation to the input.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.teachers import State


@dataclasses.dataclass
class Pairs:
    """M encoded pairs.

    Attributes:
        tokens: (M, T, D) the input states, encoded in their frames.
        targets: learned field -> (M, ...) the teacher's next state in the input's frame.
        previous: learned field -> (M, ...) the input state itself in that frame (the
            identity prediction; the denominator of the normalized error).
    """

    tokens: Tensor
    targets: dict[str, Tensor]
    previous: dict[str, Tensor]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: Tensor | list[int]) -> dict[str, object]:
        """A batch by indices: {"tokens", "targets", "previous"} (a DataLoader fetches whole
        batches through this, not one example at a time)."""
        index = torch.as_tensor(index)
        return {
            "tokens": self.tokens[index],
            "targets": {k: v[index] for k, v in self.targets.items()},
            "previous": {k: v[index] for k, v in self.previous.items()},
        }

    def to(self, dtype: torch.dtype) -> Pairs:
        cast = lambda d: {k: v.to(dtype) for k, v in d.items()}  # noqa: E731
        return Pairs(self.tokens.to(dtype), cast(self.targets), cast(self.previous))

    @staticmethod
    def cat(parts: list[Pairs]) -> Pairs:
        return Pairs(
            torch.cat([p.tokens for p in parts]),
            {k: torch.cat([p.targets[k] for p in parts]) for k in parts[0].targets},
            {k: torch.cat([p.previous[k] for p in parts]) for k in parts[0].previous},
        )


def encode_pairs(codec, problem: Problem, inputs: State, targets: State, keep: Tensor) -> Pairs:
    """Pairs from input states and target states of the same B problems; rows `keep` (B,).

    Rows whose input is not finite (an emulated state that blew up) are left out too.
    """
    for value in inputs.values():
        if value.is_floating_point():
            keep = keep & torch.isfinite(value.reshape(value.shape[0], -1)).all(-1)
    enc = codec.encode(inputs, problem)
    target = codec.to_frame(targets, enc.frame)
    previous = codec.to_frame(inputs, enc.frame)
    return Pairs(
        enc.tokens[keep],
        {k: v[keep] for k, v in target.items()},
        {k: v[keep] for k, v in previous.items()},
    )


def shuffle_targets(pairs: Pairs, seed: int) -> Pairs:
    """`pairs` with their targets permuted by a seeded permutation; each input keeps its own
    `previous`, which is the input itself in its frame."""
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    return Pairs(pairs.tokens, {k: v[perm] for k, v in pairs.targets.items()}, pairs.previous)


def teacher_pairs(
    codec, problem: Problem, traj: Trajectory, layers: list[int], shuffle_seed: int | None = None
) -> Pairs:
    """Pairs (s_{k-1}, s_k) for each layer k in `layers`, pooled; with `shuffle_seed`, each
    layer's targets shuffled among its own pairs."""
    parts = [encode_pairs(codec, problem, traj[k - 1], traj[k], ~traj.diverged[k]) for k in layers]
    if shuffle_seed is not None:
        parts = [shuffle_targets(p, shuffle_seed + k) for p, k in zip(parts, layers, strict=True)]
    return Pairs.cat(parts)


def layer_pairs(
    codec,
    problem: Problem,
    traj: Trajectory,
    layer: int,
    pairing: str,
    greedy_inputs: State | None = None,
    shuffle_seed: int | None = None,
) -> Pairs:
    """The training pairs of block `layer` under a pairing mode.

    `greedy_inputs` (B problems' states after the frozen blocks 1..layer-1) is needed for
    "greedy" pairing; for layer 1 every mode is teacher pairing on s_0. With `shuffle_seed`,
    the shuffled control's pairs, whose inputs are the teacher's states in every mode.
    """
    if pairing == "shared":
        return teacher_pairs(codec, problem, traj, list(range(1, traj.steps + 1)), shuffle_seed)
    if pairing == "greedy" and layer > 1 and shuffle_seed is None:
        if greedy_inputs is None:
            raise ValueError("greedy pairing needs the frozen stack's outputs for this layer")
        return encode_pairs(codec, problem, greedy_inputs, traj[layer], ~traj.diverged[layer])
    return teacher_pairs(codec, problem, traj, [layer], shuffle_seed)
