"""Fuzzing recipes: whatever mapping or `--set` a user writes, loading returns a Recipe or raises
a RecipeError of one readable line, and nothing else, quickly."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockwise.config import Recipe, RecipeError, load_recipe, recipe_from_dict

# A RecipeError clips its key path to 200 characters and its message to 500.
LONGEST = 750

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _fields(cls: type = Recipe) -> dict[str, typing.Any]:
    """Key path -> type of every field, sections included."""
    hints, out = typing.get_type_hints(cls), {}
    for field in dataclasses.fields(cls):
        out[field.name] = hints[field.name]
        if dataclasses.is_dataclass(hints[field.name]):
            out |= {f"{field.name}.{k}": v for k, v in _fields(hints[field.name]).items()}
    return out


FIELDS = _fields()

# Ints stay small or far out of range: a plausible size (problem.dim near its bound of 256)
# would spend the time budget building problems, and out-of-range ones are what is refused.
ints = st.integers(-3, 40) | st.sampled_from([2**31, 2**63, 10**30, -(2**70)])
text = st.text(max_size=30) | st.sampled_from(["..", "a/b", "-x", "1:30", "010", "\x00", "é"])
scalars = st.none() | st.booleans() | ints | st.floats() | text
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
# Family and teacher settings get junk under names they know, sizes included.
SETTINGS = {
    "problem": ["condition", "rotate", "shift", "input_range", "w_scale", "noise", "n_context"],
    "teacher": [
        "adaptive", "xatol", "parallelism", "sigma0", "flavour", "sampler", "lr", "popsize"
    ],
}
plausible = {
    "name": st.sampled_from(["run", "quick_1"]) | text,
    "problem.family": st.sampled_from(["quadratic", "sphere", "rosenbrock", "least_squares"]),
    "teacher.name": st.sampled_from(["nelder_mead", "parallel_nelder_mead", "cma_es", "adam"]),
    "problem.dim": st.integers(1, 6),
    "problem.settings": st.dictionaries(st.sampled_from(SETTINGS["problem"]), junk, max_size=2),
    "teacher.settings": st.dictionaries(st.sampled_from(SETTINGS["teacher"]), junk, max_size=2),
    "train.loss_weights": st.dictionaries(
        st.sampled_from(["simplex", "fvals", "nfev", "x", "mean"]), st.floats(0, 2), max_size=2
    ),
}


def _value(path: str) -> st.SearchStrategy:
    tp = FIELDS[path]
    if dataclasses.is_dataclass(tp):
        return _section(tp, f"{path}.") | junk
    return plausible.get(path, junk) | junk


def _section(cls: type, prefix: str) -> st.SearchStrategy:
    keys = [f.name for f in dataclasses.fields(cls)]
    known = st.fixed_dictionaries({}, optional={k: _value(f"{prefix}{k}") for k in keys})
    return st.tuples(known, st.dictionaries(text, junk, max_size=2)).map(lambda kv: kv[1] | kv[0])


# The top level is a mapping (a top level of junk is one check, tested in test_config.py).
recipes = _section(Recipe, "")
paths = st.sampled_from(sorted(FIELDS)) | text
values = st.sampled_from([
    "1:30", "010", "0x_", "._", "2024-13-01", "9" * 5000, "[" * 400, "{a: &a [1, 1], b: [*a, *a]}",
    "*a", "&a x", "!!python/object/apply:os.system [ls]", "- x", "{", "?", "'", "a: b: c",
]) | text | st.builds(str, scalars)


def _check(call) -> None:
    try:
        assert isinstance(call(), Recipe)
    except RecipeError as err:
        assert len(str(err)) <= LONGEST, str(err)[:2000]


@FUZZ
@given(recipes)
def test_any_mapping_is_a_recipe_or_a_recipe_error(data):
    _check(lambda: recipe_from_dict(data))


@pytest.fixture(scope="module")
def small_recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "small.yaml"
    path.write_text("steps: 2\ndata: {train_problems: 8, val_problems: 4, test_problems: 4}\n")
    return path


@FUZZ
@given(st.lists(st.tuples(paths, values).map("=".join) | text, max_size=3))
def test_any_set_is_a_recipe_or_a_recipe_error(small_recipe, overrides):
    _check(lambda: load_recipe(small_recipe, overrides))
