"""AdamW with linear warm-up then a constant or cosine rate, stepped every optimizer step."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def adamw_with_schedule(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
) -> dict:
    """What a LightningModule's configure_optimizers returns: AdamW, and a per-step schedule
    that warms up linearly over `warmup_steps`, then stays ("constant") or decays to 0 at
    `total_steps` ("cosine")."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = min(step - warmup_steps, total) / max(total - warmup_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
