"""Measurements: normalized emulation errors and their summaries."""

from blockwise.evaluation.errors import normalized_error, summarize

__all__ = ["normalized_error", "summarize"]
