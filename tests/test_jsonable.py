"""One JSON convention for every number blockwise writes (blockwise.jsonable)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from blockwise.jsonable import to_jsonable


def test_nan_is_null_and_infinities_are_the_largest_floats():
    value = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "x": 0.25}
    out = to_jsonable(value)
    assert out == {"nan": None, "inf": sys.float_info.max, "-inf": -sys.float_info.max, "x": 0.25}
    # Strict JSON, and a blow-up reads back as the worst value rather than as a missing one.
    assert json.loads(json.dumps(out, allow_nan=False))["inf"] > 1e308


def test_tensors_numpy_tuples_and_keys_are_unwrapped():
    value = {1: (torch.tensor(0.5), np.float32(2.0), np.int64(3), np.bool_(True)),
             "t": torch.tensor([1.0, math.nan]), "a": np.array([[1, 2]])}
    out = to_jsonable(value)
    assert out == {"1": [0.5, 2.0, 3, True], "t": [1.0, None], "a": [[1, 2]]}
    assert [type(v) for v in out["1"]] == [float, float, int, bool]
    json.dumps(out, allow_nan=False)


def test_anything_else_is_a_type_error_naming_where():
    with pytest.raises(TypeError, match=r"metrics\.per_layer\[1\] is a set"):
        to_jsonable({"per_layer": [1, {2}]}, "metrics")
    with pytest.raises(TypeError, match=r"value\.f is a function"):
        to_jsonable({"f": lambda: 0})
