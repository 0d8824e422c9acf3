"""One transformer block: attention and MLP, each with a residual connection and a norm.

A plain `nn.Module` on the residual stream (B, T, width); it knows nothing of tokens or
teachers (the read-in and read-out around it do, see `readio.py`). Identity modules named
hook_* sit at the points a probe may want to read or patch (TransformerLens's naming).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from blockwise.model.attention import Attention, AttentionKind

NormPlacement = Literal["pre", "post", "none"]


class Block(nn.Module):
    """Attention then MLP, residual around each.

    Args:
        width: residual stream width d_model.
        heads: attention heads (width % heads == 0).
        mlp_ratio: hidden width of the MLP as a multiple of width; 0 means no MLP (an
            attention-only block, as in von Oswald et al. 2023).
        norm: "pre" (LayerNorm before each sublayer, GPT-2), "post" (after each residual
            sum, the original transformer), or "none" (needed for an exact linear GD step).
        attention: "softmax" or "linear".
        dropout: dropout on each sublayer's output.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        norm: NormPlacement = "pre",
        attention: AttentionKind = "softmax",
        dropout: float = 0.0,
    ):
        super().__init__()
        if norm not in ("pre", "post", "none"):
            raise ValueError(f"block: norm must be 'pre', 'post' or 'none', got {norm!r}")
        if mlp_ratio < 0:
            raise ValueError(f"block: mlp_ratio must be >= 0, got {mlp_ratio!r}")
        self.norm = norm
        self.attn = Attention(width, heads, attention)
        hidden = round(mlp_ratio * width)
        self.mlp = (
            nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
            if hidden
            else None
        )
        make_norm = nn.LayerNorm if norm != "none" else (lambda _: nn.Identity())
        self.norm_attn, self.norm_mlp = make_norm(width), make_norm(width)
        self.drop = nn.Dropout(dropout)
        self.hook_attn_out = nn.Identity()
        self.hook_resid_mid = nn.Identity()
        self.hook_mlp_out = nn.Identity()
        self.hook_resid_post = nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        """(B, T, width) -> (B, T, width)."""
        pre = self.norm == "pre"
        a = self.hook_attn_out(self.drop(self.attn(self.norm_attn(h) if pre else h)))
        h = self.hook_resid_mid(h + a if pre or self.norm == "none" else self.norm_attn(h + a))
        if self.mlp is not None:
            m = self.hook_mlp_out(self.drop(self.mlp(self.norm_mlp(h) if pre else h)))
            h = h + m if pre or self.norm == "none" else self.norm_mlp(h + m)
        return self.hook_resid_post(h)
