"""Recipes from YAML: read, apply `--set` overrides, check every field, resolve.

Loading is pure: a recipe is checked whole, fields first, then the relations between them and
a problem and teacher actually built from it, before a caller can write anything. The first
problem found stops loading with a RecipeError naming the file, the key path and what was
expected. `save_recipe` is the only function here that writes.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml

from blockwise import problems, teachers
from blockwise.config.schema import Check, Recipe


class RecipeError(ValueError):
    """A recipe that cannot run. Attributes: file, key_path ("" for the whole file), message.

    A ValueError, so that the command line reports it like any bad input (exit code 2).
    """

    def __init__(self, file: str | Path, key_path: str, message: str):
        self.file, self.key_path, self.message = str(file), key_path, message
        super().__init__(self.file, key_path, message)  # these args, so that it pickles

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key_path, self.message) if part)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that 1e-3 is a float: YAML 1.1 wants a dot (1.0e-3) and
    PyYAML would hand a learning rate written the usual way over as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """The recipe in YAML file `path`, with `key.path=value` overrides applied in order.

    Omitted fields take their defaults; a file without `name` is named after the file.
    """
    overrides = list(overrides)
    data = _read(path)
    for override in overrides:
        _apply(data, override, path)
    data.setdefault("name", Path(path).stem)
    try:
        return recipe_from_dict(data, path)
    except RecipeError as err:
        culprits = [o for o in overrides if _related(o.partition("=")[0], err.key_path)]
        if not culprits:
            raise
        message = f"{err.message} (from --set {culprits[-1]})"
        raise RecipeError(path, err.key_path, message) from None


def recipe_from_dict(data: Any, file: str | Path = "<recipe>") -> Recipe:
    """The recipe described by a mapping as YAML gives it; errors name `file`."""
    return _resolve(_build(Recipe, data, "", str(file)), str(file))


# Fields added after runs were saved, with the value that reproduces what those runs computed
# (not today's default): filled into a saved, resolved recipe that lacks them.
ADDED_LATER = {("finetune", "objective"): "frame_mse"}


def saved_recipe(data: Any) -> Any:
    """A resolved recipe as a run directory or checkpoint saved it (a mapping), with the
    fields it predates filled in as `ADDED_LATER` says."""
    if not isinstance(data, dict):
        return data
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for (section, key), value in ADDED_LATER.items():
        if isinstance(data.get(section), dict):
            data[section].setdefault(key, value)
    return data


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Every field, sections as nested mappings: what `recipe_from_dict` takes back."""
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every field explicit, in schema order."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe to `path`, for `load_recipe` to read back."""
    text = "# resolved recipe: every field explicit\n" + dump_recipe(recipe)
    Path(path).write_text(text, encoding="utf-8")


def expectation(tp: Any, check: Check | None = None) -> str:
    """What a field of type `tp` with constraint `check` takes, in words: "an int >= 1"."""
    words = _type_words(tp)
    return f"{words} {check.expects}" if check else words


def _read(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(path, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as err:  # a directory, unreadable, not text
        raise RecipeError(path, "", f"cannot read: {err}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise RecipeError(path, "", f"not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(path, "", f"expected a mapping of recipe keys, got {_show(data)}")
    return data


def _apply(data: dict[str, Any], override: str, file: str | Path) -> None:
    """Set data[key][path] = value for one `key.path=value`, making missing sections."""
    key, eq, text = override.partition("=")
    parts = key.split(".")
    if not eq or not all(parts):
        raise RecipeError(
            file, f"--set {override}", "expected KEY.PATH=VALUE, e.g. --set train.lr=3e-4"
        )
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        why = getattr(err, "problem", None) or err
        raise RecipeError(file, key, f"not valid YAML: {why} (from --set {override})") from None
    node = data
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            raise RecipeError(file, where, f"is not a section (from --set {override})")
    node[parts[-1]] = value


def _related(a: str, b: str) -> bool:
    """Whether key paths a and b are the same or one lies inside the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _build(cls: type, data: Any, path: str, file: str, base: Any = None) -> Any:
    """An instance of dataclass `cls` from mapping `data`: the fields it names, checked, over
    `base` (the section's defaults) or the class defaults."""
    if not isinstance(data, dict):
        raise RecipeError(file, path, f"expected a mapping (a section), got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    values = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise RecipeError(file, where, _unknown(key, fields))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, where, file, fields[key].default_factory())
        else:
            values[key] = _field(value, tp, fields[key].metadata["check"], where, file)
    return cls(**values) if base is None else dataclasses.replace(base, **values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: Any, fields: dict[str, Any]) -> str:
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; expected one of {', '.join(fields)}"


def _field(value: Any, tp: Any, check: Check | None, where: str, file: str) -> Any:
    ok, coerced = _coerce(value, tp)
    if not (ok and (check is None or check.ok(coerced))):
        raise RecipeError(file, where, f"expected {expectation(tp, check)}, got {_show(value)}")
    return coerced


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether `value` has type `tp`, the value as stored). bool is no int; an int is a float."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool or tp is str or tp is type(None):
        return isinstance(value, tp), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (True, float(value)) if number and math.isfinite(value) else (False, None)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args), value
    if origin is dict:
        if not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
            return False, None
        if args[1] is Any:
            return True, dict(value)
        items = {k: _coerce(v, args[1]) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    if origin in (typing.Union, types.UnionType):
        for member in args:
            ok, coerced = _coerce(value, member)
            if ok:
                return True, coerced
        return False, None
    raise TypeError(f"recipe schema: no rule for type {tp!r}")


def _type_words(tp: Any) -> str:
    words = {bool: "a bool", int: "an int", float: "a number", str: "a string"}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in words:
        return words[tp]
    if tp is type(None):
        return "null"
    if origin is Literal:
        names = ", ".join(json.dumps(a) for a in args)
        return names if len(args) == 1 else f"one of {names}"
    if origin is dict:
        return "a mapping" if args[1] is Any else f"a mapping, each value {_type_words(args[1])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in args)
    raise TypeError(f"recipe schema: no words for type {tp!r}")


def _show(value: Any) -> str:
    """A value as the recipe's author would write it: null, true, "text"."""
    return json.dumps(value, default=repr)


def _resolve(recipe: Recipe, file: str) -> Recipe:
    """Check what involves several fields or needs a problem and a teacher built; return the
    recipe with the family's and the teacher's settings completed by their defaults."""
    p, t, b, d = recipe.problem, recipe.teacher, recipe.block, recipe.data
    min_dim = problems.REGISTRY[p.family].min_dim()
    if p.dim < min_dim:
        raise RecipeError(
            file, "problem.dim", f"expected an int >= {min_dim} for {p.family}, got {p.dim}"
        )
    # Building one instance is the family's own check of its settings. TypeError too: a
    # setting of a type the family did not expect can fail inside its arithmetic.
    try:
        problem = problems.make(p.family, batch=1, dim=p.dim, seed=d.train_seed, **p.settings)
    except (TypeError, ValueError) as err:
        raise RecipeError(file, "problem.settings", str(err)) from None
    try:
        teacher = teachers.make(t.name, **t.settings)
        # Starting it catches settings that depend on n (parallel NM's parallelism <= n).
        teacher.init(problem, problem.sample_x0(seed=d.train_seed, radius=p.x0_radius))
    except (TypeError, ValueError) as err:
        raise RecipeError(file, "teacher.settings", str(err)) from None
    for stage in ("train", "finetune"):
        unknown = sorted(set(getattr(recipe, stage).loss_weights) - set(teacher.state_fields))
        if unknown:
            raise RecipeError(
                file, f"{stage}.loss_weights",
                f"unknown field(s) {', '.join(unknown)}; "
                f"{t.name}'s state has {', '.join(teacher.state_fields)}",
            )
    f = recipe.finetune
    if f.freeze_blocks_epochs and not f.train_readio:
        raise RecipeError(
            file, "finetune.freeze_blocks_epochs",
            "expected 0 unless finetune.train_readio is true (with the blocks frozen and the "
            f"read-in/read-out frozen nothing would train), got {f.freeze_blocks_epochs}",
        )
    if b.width % b.heads:
        raise RecipeError(
            file, "block.heads", f"expected a divisor of block.width = {b.width}, got {b.heads}"
        )
    seeds = {name: getattr(d, name) for name in ("train_seed", "val_seed", "test_seed")}
    for (first, a), (second, b_seed) in itertools.combinations(seeds.items(), 2):
        if a == b_seed:
            raise RecipeError(
                file, f"data.{second}",
                f"expected a seed other than data.{first} = {a} (the problem sets must be "
                f"disjoint), got {b_seed}",
            )
    return dataclasses.replace(
        recipe,
        problem=dataclasses.replace(p, settings=dict(problem.settings)),
        teacher=dataclasses.replace(t, settings=dataclasses.asdict(teacher)),
    )
