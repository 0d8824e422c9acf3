"""Hypothesis mutates a small valid checkpoint: each read either succeeds or raises
CheckpointError, never another exception, never a hang or a large allocation."""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_checkpoints import deadline, make_stack

from blockwise import CheckpointError, load_stack, problems, read_config, save_stack
from blockwise.config import recipe_from_dict

BUDGET_S = 15  # for all the examples together, on a busy 2-core machine

SIZES = st.sampled_from([0, -1, 1, 2, 3, 7, 2**31, 2**63, 10**9, 10**30, -(10**9)])
LEAVES = (
    st.none() | st.booleans() | SIZES | st.integers() | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False)
)
JSON = st.recursive(
    LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                       max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict[str, bytes]:
    recipe = recipe_from_dict({
        "name": "tiny", "steps": 3,
        "problem": {"family": "quadratic", "dim": 2, "settings": {"condition": 10.0}},
        "teacher": {"name": "nelder_mead"}, "block": {"width": 32, "heads": 2, "mlp_ratio": 2.0},
    })
    problem = problems.make("quadratic", batch=4, dim=2, seed=3, condition=10.0)
    path = save_stack(make_stack(recipe, problem), recipe, tmp_path_factory.mktemp("fuzz") / "c")
    return {f.name: f.read_bytes() for f in path.iterdir()}


def paths(value, prefix=()):
    """Every key or index path into a JSON value, the root included."""
    yield prefix
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in items:
        yield from paths(child, (*prefix, key))


def mutate(config: dict, data) -> dict:
    """`config` with one to three edits: a value replaced or a key deleted at any depth."""
    config = copy.deepcopy(config)
    for _ in range(data.draw(st.integers(1, 3), "edits")):
        where = data.draw(st.sampled_from(list(paths(config))[1:]), "path")
        *parents, last = where
        holder = config
        for key in parents:
            holder = holder[key]
        if isinstance(holder, dict) and data.draw(st.booleans(), "delete"):
            del holder[last]
        else:
            holder[last] = data.draw(JSON, "value")
    return config


def mutate_weights(blob: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["keep", "keep", "keep", "flip", "truncate"]), "weights")
    if kind == "flip":
        at = data.draw(st.integers(0, len(blob) - 1), "byte")
        return blob[:at] + bytes([blob[at] ^ data.draw(st.integers(1, 255))]) + blob[at + 1:]
    if kind == "truncate":
        return blob[: data.draw(st.integers(0, len(blob) - 1), "length")]
    return blob


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_checkpoint_loads_or_raises_checkpoint_error(original, data):
    config = json.loads(original["config.json"])
    text = json.dumps(mutate(config, data), ensure_ascii=False)
    if data.draw(st.integers(0, 19), "raw") == 0:  # sometimes not JSON at all
        text = text[: data.draw(st.integers(0, len(text)), "cut")] + data.draw(st.text(max_size=8))
    weights = mutate_weights(original["model.safetensors"], data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt"
        path.mkdir()
        (path / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        (path / "model.safetensors").write_bytes(weights)
        for read in (read_config, load_stack):
            start = time.monotonic()
            with deadline(10):
                try:
                    read(path)
                except CheckpointError as err:
                    assert err.file.startswith(str(path)) and len(str(err)) < 2000
            assert time.monotonic() - start < 5, (read.__name__, text[:300])
