"""A stack: K blocks, each between an encode of the current state and a decode of its output.

Layer k encodes the emulated state s_{k-1} in its own frame (in `oracle` mode the encode is
where the harness evaluates f between layers), runs block k through the shared read-in and
read-out, and decodes the emulated s_k. That is the map each block was pretrained on, so
blocks trained apart compose, and every layer's output is a state that can be measured.
"""

from __future__ import annotations

from torch import nn

from blockwise.model import Block, ReadIO
from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.teachers import State


class Stack(nn.Module):
    """Blocks 1..K with the codec and the shared read-in/read-out.

    Args:
        codec: the codec of the teacher and problem family the blocks were trained on.
        readio: the shared read-in/read-out.
        blocks: the K blocks, in order.
    """

    def __init__(self, codec, readio: ReadIO, blocks: list[Block]):
        super().__init__()
        self.codec = codec
        self.readio = readio
        self.blocks = nn.ModuleList(blocks)

    def layer(self, k: int, state: State, problem: Problem) -> State:
        """Block k (1-indexed) applied to `state`: the emulated next state."""
        enc = self.codec.encode(state, problem)
        dtype = self.readio.read_in.weight.dtype
        tokens = self.readio.layer(self.blocks[k - 1], enc.tokens.to(dtype))
        return self.codec.decode(tokens.to(enc.tokens.dtype), enc)

    def forward(self, problem: Problem, state: State, layers: int | None = None) -> list[State]:
        """Rollout from s_0 = `state`: the emulated states after layers 1..L (default all)."""
        out = []
        for k in range(1, (layers or len(self.blocks)) + 1):
            state = self.layer(k, state, problem)
            out.append(state)
        return out

    def teacher_forced(self, problem: Problem, traj: Trajectory) -> list[State]:
        """Block k applied to the teacher's s_{k-1}, for k = 1..K: the one-step emulations."""
        return [self.layer(k, traj[k - 1], problem) for k in range(1, len(self.blocks) + 1)]

    def extra_repr(self) -> str:
        return f"layers={len(self.blocks)}, codec={type(self.codec).__name__}"
