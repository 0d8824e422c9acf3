"""Shared fixtures: every teacher in the registry, with settings that suit a test objective."""

from __future__ import annotations

import pytest
import torch

from blockwise import teachers

# Settings that make each teacher take sensible steps on the small test problems.
TEST_SETTINGS: dict[str, dict] = {
    "gradient_descent": {"lr": 0.02},
    "momentum": {"lr": 0.02},
    "adam": {"lr": 0.05},
}


@pytest.fixture(params=sorted(teachers.REGISTRY))
def teacher(request) -> teachers.Teacher:
    return teachers.make(request.param, **TEST_SETTINGS.get(request.param, {}))


@pytest.fixture
def one_thread():
    """One torch thread for the test, given back afterwards: probes are many small operations,
    which a second thread only slows (a lot on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _float64_default():
    """Tests choose dtypes explicitly; keep torch's global default as it was."""
    before = torch.get_default_dtype()
    yield
    torch.set_default_dtype(before)
