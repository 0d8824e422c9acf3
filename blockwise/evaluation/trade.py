"""What fine-tuning traded: per layer, the fine-tuned stack's median error against the stacked
blocks' it started from.

End-to-end fine-tuning minimizes a sum over layers, so it may buy deep layers' accuracy with
early ones' (GD: layer 1 went from 0.0099 to 0.116). A run says so, per layer, instead of
reporting only the layers that improved.

    trade = layer_trade(evaluations["stacked"], evaluations["finetuned"])
    trade["worse"]["rollout"]      # the layers where fine-tuning made the rollout error larger
"""

from __future__ import annotations

from typing import Any

KINDS = ("teacher_forced", "rollout")


def layer_trade(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """{"field", "ratio": {kind: [L]}, "worse": {kind: [layer, ...]}} for two evaluations
    (`evaluate_stack` results) of stacks of the same depth: ratio = after / before of the median
    error of the primary field per layer (None where either is missing), worse = the 1-based
    layers whose ratio exceeds 1."""
    field = before["primary"]
    ratio, worse = {}, {}
    for kind in KINDS:
        pairs = zip(before[kind][field]["median"], after[kind][field]["median"], strict=True)
        ratio[kind] = [a / b if a is not None and b else None for b, a in pairs]
        worse[kind] = [k + 1 for k, r in enumerate(ratio[kind]) if r is not None and r > 1]
    return {"field": field, "ratio": ratio, "worse": worse}


def format_trade(trade: dict[str, Any], name: str = "fine-tuned") -> str:
    """The trade as printed by a run: one line per kind of error."""
    lines = [f"{name} / stacked, median {trade['field']} error per layer (< 1: better):"]
    for kind in KINDS:
        cells = " ".join("-" if r is None else f"{r:.2f}" for r in trade["ratio"][kind])
        worse = trade["worse"][kind]
        said = f"worse at layer(s) {', '.join(map(str, worse))}" if worse else "no layer worse"
        lines.append(f"  {kind:<15} {cells}   ({said})")
    return "\n".join(lines)
