"""The maps between tokens and the residual stream, shared by every block of a stack.

Blocks compose only if they agree on what the residual stream means, so the read-in
(tokens -> stream) and read-out (stream -> tokens) are one pair for the whole stack (Garg et
al. 2022 call them _read_in / _read_out). A layer reads out the block's *update*, not its
output:
    tokens_out = tokens + read_out(block(read_in(tokens)) - read_in(tokens)),
so a block that changes nothing reproduces its input state exactly: the identity baseline
is a block with zero update, whatever the read-in and read-out are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from blockwise.model.block import Block


class ReadIO(nn.Module):
    """read_in: Linear(token_dim, width); read_out: Linear(width, token_dim); no biases.

    Both start as the identity on the first token_dim dimensions of the stream (the rest
    start at zero), so the residual stream is the token vector, slot for slot, and a probe
    can read a slot directly. Pretraining keeps them frozen; fine-tuning may train them.
    """

    def __init__(self, token_dim: int, width: int):
        super().__init__()
        if width < token_dim:
            raise ValueError(
                f"block width {width} is smaller than the codec's token_dim {token_dim}: "
                f"set block.width >= {token_dim}"
            )
        self.read_in = nn.Linear(token_dim, width, bias=False)
        # No bias in read_out: a zero update must read out as zero change.
        self.read_out = nn.Linear(width, token_dim, bias=False)
        with torch.no_grad():
            self.read_in.weight.copy_(torch.eye(width, token_dim))
            self.read_out.weight.copy_(torch.eye(token_dim, width))

    def layer(self, block: Block, tokens: Tensor) -> Tensor:
        """One layer: tokens (B, T, D) -> next tokens (B, T, D) through `block`."""
        h = self.read_in(tokens)
        return tokens + self.read_out(block(h) - h)
