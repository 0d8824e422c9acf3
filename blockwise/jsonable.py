"""One convention for writing numbers as strict JSON (config.json, metrics.json, --json).

Strict JSON has no NaN and no infinity. NaN, a missing or undefined value, is written null;
+-inf, a blow-up, is written +-sys.float_info.max (1.7976931348623157e+308), so that it reads
back as the worst value rather than as a missing one: a finite float that compares above every
measured error, which any strict JSON reader accepts (Python's `json` reads it back as that
finite maximum, not as inf).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from torch import Tensor


def to_jsonable(value: Any, where: str = "value") -> Any:
    """`value` as plain JSON values: tensors and numpy arrays or scalars unwrapped, tuples as
    lists, keys as str, NaN as None and +-inf as +-sys.float_info.max.

    Raises TypeError naming `where` (and the key or index path below it) for anything else.
    """
    if isinstance(value, Tensor) or _is_numpy(value):
        value = value.tolist()  # a 0-d tensor or a numpy scalar gives a Python number
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return math.copysign(sys.float_info.max, value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"to_jsonable: {where} is a {type(value).__name__}, not a JSON value")


def _is_numpy(value: Any) -> bool:
    # Checked by module name, so that numpy is not imported for this.
    return type(value).__module__ == "numpy" and hasattr(value, "tolist")
