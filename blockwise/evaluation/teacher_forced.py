"""Per-block teacher-forced error: block k applied to the teacher's s_{k-1}, against s_k.

Each number sits beside its controls (design.md): the identity ("do nothing", exactly 1 by
construction of the normalized error) and the same block before training.
"""

from __future__ import annotations

import torch

from blockwise.evaluation.errors import emulation_error, summarize
from blockwise.model import Block, ReadIO
from blockwise.problems import Problem
from blockwise.rollout import Trajectory
from blockwise.training.pairs import teacher_pairs


@torch.no_grad()
def teacher_forced_errors(
    codec,
    readio: ReadIO,
    problem: Problem,
    traj: Trajectory,
    trained: list[Block],
    untrained: list[Block],
) -> list[dict]:
    """Per layer k: {"layer", "count", "fields": {field: {"trained", "untrained", "identity"}}},
    each a summary (median, p10, p90, count) of the normalized error over test problems."""
    dtype = readio.read_in.weight.dtype
    modes = [b.training for b in trained + untrained]
    rows = []
    for k, (block, control) in enumerate(zip(trained, untrained, strict=True), start=1):
        pairs = teacher_pairs(codec, problem, traj, [k])
        tokens = pairs.tokens.to(dtype)
        preds = {
            "trained": codec.read(readio.layer(block.eval(), tokens).double()),
            "untrained": codec.read(readio.layer(control.eval(), tokens).double()),
            "identity": pairs.previous,
        }
        fields = {
            f: {
                label: summarize(emulation_error(pred[f], pairs.targets[f], pairs.previous[f]))
                for label, pred in preds.items()
            }
            for f in pairs.targets
        }
        rows.append({"layer": k, "count": len(pairs), "fields": fields})
    for block, mode in zip(trained + untrained, modes, strict=True):
        block.train(mode)  # measured in eval mode, handed back as they came
    return rows


def format_table(rows: list[dict]) -> str:
    """The per-block errors as a text table: median [p10, p90] per field and control."""
    lines = [
        f"{'block':>5}  {'field':<8} {'trained':>24} {'untrained':>24} {'identity':>10}",
    ]
    for row in rows:
        for field, by_label in row["fields"].items():
            t, u, i = by_label["trained"], by_label["untrained"], by_label["identity"]
            span = lambda s: f"{s['median']:.3g} [{s['p10']:.2g}, {s['p90']:.2g}]"  # noqa: E731
            lines.append(
                f"{row['layer']:>5}  {field:<8} {span(t):>24} {span(u):>24} {i['median']:>10.3g}"
            )
    return "\n".join(lines)
