"""A stack: K blocks, each between an encode of the current state and a decode of its output.

Layer k encodes the emulated state s_{k-1} in its own frame (in `oracle` mode the encode is
where the harness evaluates f between layers), runs block k through the shared read-in and
read-out, and decodes the emulated s_k. That is the map each block was pretrained on, so
blocks trained apart compose, and every layer's output is a state that can be measured.

A looped stack is the baseline with tied weights: one block applied at every layer. It holds
that one block once (not K references to it), so its state_dict and checkpoint have one.
"""

from __future__ import annotations

from torch import nn

from blockwise.model import Block, ReadIO
from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.teachers import State


class Stack(nn.Module):
    """Layers 1..K with the codec and the shared read-in/read-out.

    Args:
        codec: the codec of the teacher and problem family the blocks were trained on.
        readio: the shared read-in/read-out.
        blocks: the K blocks, in order; for a looped stack, its one block.
        looped: apply the one block at every layer (tied weights).
        depth: K, the layers of a looped stack; otherwise it is len(blocks) and may be omitted.

    Attributes:
        depth: K, the layers that `forward` and `teacher_forced` run by default.
    """

    def __init__(
        self,
        codec,
        readio: ReadIO,
        blocks: list[Block],
        looped: bool = False,
        depth: int | None = None,
    ):
        super().__init__()
        if looped and (len(blocks) != 1 or depth is None or depth < 1):
            raise ValueError(
                f"stack: a looped stack takes one block and a depth >= 1, got {len(blocks)} "
                f"block(s) and depth {depth}"
            )
        if not looped and depth not in (None, len(blocks)):
            raise ValueError(
                f"stack: depth {depth} differs from the {len(blocks)} blocks given; only a "
                "looped stack repeats a block"
            )
        self.codec = codec
        self.readio = readio
        self.blocks = nn.ModuleList(blocks)
        self.looped = looped
        self.depth = depth if looped else len(blocks)

    def block(self, k: int) -> Block:
        """The block of layer k (1-indexed). A looped stack's one block serves any k >= 1, so
        it can also be run deeper than it was trained."""
        if k < 1 or (k > self.depth and not self.looped):
            raise IndexError(f"stack: no layer {k}; layers are 1..{self.depth}")
        return self.blocks[0 if self.looped else k - 1]

    def layer(self, k: int, state: State, problem: Problem) -> State:
        """Layer k (1-indexed) applied to `state`: the emulated next state, in state's dtype.

        Encode and decode run in the state's dtype; only the tokens, in the frame, are cast
        to the blocks' dtype and back. A simplex 60 steps in lies below float32's resolution
        of its own position, so a float64 trajectory must stay float64 between layers, while
        its coordinates in the frame are O(1) and a float32 block resolves them."""
        enc = self.codec.encode(state, problem)
        dtype = self.readio.read_in.weight.dtype
        tokens = self.readio.layer(self.block(k), enc.tokens.to(dtype))
        return self.codec.decode(tokens.to(enc.tokens.dtype), enc)

    def forward(self, problem: Problem, state: State, layers: int | None = None) -> list[State]:
        """Rollout from s_0 = `state`: the emulated states after layers 1..L (default K)."""
        out = []
        for k in range(1, (layers or self.depth) + 1):
            state = self.layer(k, state, problem)
            out.append(state)
        return out

    def teacher_forced(self, problem: Problem, traj: Trajectory) -> list[State]:
        """Layer k applied to the teacher's s_{k-1}, for k = 1..K: the one-step emulations."""
        return [self.layer(k, traj[k - 1], problem) for k in range(1, self.depth + 1)]

    def extra_repr(self) -> str:
        looped = ", looped" if self.looped else ""
        return f"layers={self.depth}{looped}, codec={type(self.codec).__name__}"
