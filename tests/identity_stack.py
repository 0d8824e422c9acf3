"""Blocks that change nothing, for tests that need the identity stack: their attention and MLP
outputs are zeroed, so each layer's update is exactly zero."""

from __future__ import annotations

import torch

from blockwise.build import new_block
from blockwise.config import Recipe


def identity_blocks(recipe: Recipe) -> list:
    """recipe.steps blocks whose attention and MLP add nothing to the residual stream."""
    blocks = [new_block(recipe, k) for k in range(1, recipe.steps + 1)]
    with torch.no_grad():
        for block in blocks:
            for out in (block.attn.out, block.mlp[2]):
                out.weight.zero_()
                out.bias.zero_()
    return blocks
