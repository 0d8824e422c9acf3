"""Multi-head self-attention over a token set, softmax or linear.

Every token attends to every token (no causal mask): a teacher's state is a set of tokens
whose order is carried by index slots, not by a sequence. `linear` drops the softmax, as the
linear self-attention (LSA) of von Oswald et al. 2023 (ICML), Eq. 3-4:
    e_j <- e_j + sum_h P_h V_h sum_i e_i (K_h e_i)^T (Q_h e_j),
unnormalized, which can implement one gradient-descent step on in-context least squares
exactly (their Prop. 1). `softmax` is the usual scaled dot-product attention.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

AttentionKind = Literal["softmax", "linear"]


class Attention(nn.Module):
    """Self-attention on (B, T, width) -> (B, T, width).

    Attributes:
        qkv: one Linear(width, 3 width) for queries, keys and values of all heads.
        out: Linear(width, width), the heads' output projection (P in von Oswald et al.).
        hook_pattern: identity on the (B, heads, T, T) attention scores, for probes.
    """

    def __init__(self, width: int, heads: int, kind: AttentionKind = "softmax"):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention: width {width} is not divisible by heads {heads}")
        if kind not in ("softmax", "linear"):
            raise ValueError(f"attention: kind must be 'softmax' or 'linear', got {kind!r}")
        self.width, self.heads, self.kind = width, heads, kind
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.hook_pattern = nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        batch, tokens, width = h.shape
        q, k, v = self.qkv(h).split(width, dim=-1)
        # (B, T, width) -> (B, heads, T, head_dim)
        q, k, v = (t.view(batch, tokens, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2)  # (B, heads, T_query, T_key)
        if self.kind == "softmax":
            scores = torch.softmax(scores / (q.shape[-1] ** 0.5), dim=-1)
        mixed = self.hook_pattern(scores) @ v  # (B, heads, T, head_dim)
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, width))
