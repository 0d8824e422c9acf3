"""The LightningDataModule of one block's pretraining: rollouts -> encoded one-step pairs.

Train, validation and test problems come from disjoint seeds; their rollouts are cached on
disk (see `rollouts.py`) and generated on the training device. Pairs are built once, in
float64 from the exact teacher states, then cast to the training dtype; a DataLoader then
fetches whole batches by index, since per-example fetching would dominate at these sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.teachers import State
from blockwise.training.batches import batch_loader
from blockwise.training.pairs import Pairs, layer_pairs

GreedyInputs = Callable[[Problem, Trajectory], State]
"""For greedy pairing: the frozen stack's output after blocks 1..k-1 on a split's problems."""


class PairDataModule(L.LightningDataModule):
    """Pairs for block `layer` (1-indexed) under `pairing`.

    Args:
        codec: encodes states into tokens.
        splits: "train" and "val" -> (problems, float64 trajectory), already rolled out.
        layer, pairing: which block, and how its inputs are chosen (see `pairs.py`).
        batch_size: pairs per batch.
        seed: seeds the shuffling.
        greedy_inputs: needed for greedy pairing of layers > 1.
        dtype: dtype of the tensors handed to the block.
        shuffled: the shuffled control's pairs (targets permuted among a step's pairs).
    """

    def __init__(
        self,
        codec,
        splits: dict[str, tuple[Problem, Trajectory]],
        layer: int,
        pairing: str,
        batch_size: int,
        seed: int = 0,
        greedy_inputs: GreedyInputs | None = None,
        dtype: torch.dtype = torch.float32,
        shuffled: bool = False,
    ):
        super().__init__()
        self.shuffled = shuffled
        self.codec, self.splits, self.layer, self.pairing = codec, splits, layer, pairing
        self.batch_size, self.seed, self.greedy_inputs, self.dtype = (
            batch_size,
            seed,
            greedy_inputs,
            dtype,
        )
        self.pairs: dict[str, Pairs] = {}

    def setup(self, stage: str | None = None) -> None:
        for name in ("train", "val"):
            if name in self.pairs:
                continue
            problem, traj = self.splits[name]
            inputs = None
            if self.pairing == "greedy" and self.layer > 1 and not self.shuffled:
                inputs = self.greedy_inputs(problem, traj)
            shuffle_seed = self.seed if self.shuffled else None
            pairs = layer_pairs(
                self.codec, problem, traj, self.layer, self.pairing, inputs, shuffle_seed
            )
            if len(pairs) == 0:
                raise ValueError(f"block {self.layer}: no {name} pairs (every problem diverged)")
            self.pairs[name] = pairs.to(self.dtype)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        return batch_loader(self.pairs[name], self.batch_size, shuffle, self.seed)

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int):
        """The batch's known layout, moved directly: Lightning's generic walk over nested
        collections costs more than a small block's whole step."""
        move = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return {
            "tokens": batch["tokens"].to(device, non_blocking=True),
            "targets": move(batch["targets"]),
            "previous": move(batch["previous"]),
        }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
