"""Measurements: normalized emulation errors, their summaries, and a whole stack's evaluation."""

from blockwise.evaluation.errors import normalized_error, summarize
from blockwise.evaluation.metrics import (
    LayerErrors,
    LayerQuantiles,
    ProgressRatio,
    breakdown_depth,
    progress_ratio,
    quantiles,
)
from blockwise.evaluation.stack_eval import eval_checkpoint, evaluate_stack, to_jsonable

__all__ = [
    "LayerErrors",
    "LayerQuantiles",
    "ProgressRatio",
    "breakdown_depth",
    "eval_checkpoint",
    "evaluate_stack",
    "normalized_error",
    "progress_ratio",
    "quantiles",
    "summarize",
    "to_jsonable",
]
