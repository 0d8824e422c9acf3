"""Measurements: normalized emulation errors, their summaries, and a whole stack's evaluation."""

from blockwise.errors import normalized_error
from blockwise.evaluation.metrics import (
    LayerErrors,
    LayerQuantiles,
    ProgressRatio,
    breakdown_depth,
    progress_ratio,
    quantiles,
    summarize,
)
from blockwise.evaluation.stack_eval import eval_checkpoint, evaluate_stack
from blockwise.evaluation.teacher_forced import format_table, teacher_forced_errors
from blockwise.jsonable import to_jsonable

__all__ = [
    "LayerErrors",
    "LayerQuantiles",
    "ProgressRatio",
    "breakdown_depth",
    "eval_checkpoint",
    "evaluate_stack",
    "format_table",
    "normalized_error",
    "progress_ratio",
    "quantiles",
    "summarize",
    "teacher_forced_errors",
    "to_jsonable",
]
