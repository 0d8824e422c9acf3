"""The network: attention, the transformer block, and the shared token read-in / read-out."""

from blockwise.model.attention import Attention
from blockwise.model.block import Block
from blockwise.model.readio import ReadIO

__all__ = ["Attention", "Block", "ReadIO"]
