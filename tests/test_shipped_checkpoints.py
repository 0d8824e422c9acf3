"""Every stack shipped in checkpoints/ loads and reproduces the metrics stored with it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from blockwise.checkpoints import load_stack, read_config
from blockwise.evaluation.stack_eval import eval_checkpoint

SHIPPED = sorted(p for p in (Path(__file__).parent.parent / "checkpoints").iterdir() if p.is_dir())


def _assert_close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12), (where, got, want)
    else:
        assert got == want, (where, got, want)


def test_at_least_the_quickstart_is_shipped():
    assert "quickstart" in [p.name for p in SHIPPED]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_stack_reproduces_its_metrics(path):
    stored = read_config(path)["metrics"]
    stack = load_stack(path)
    assert not stack.training and stack.depth == stored["layers"]
    assert path.joinpath("model.safetensors").stat().st_size < 5 * 2**20
    _assert_close(eval_checkpoint(path, problems=stored["problems"]), stored, path.name)
