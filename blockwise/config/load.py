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
import os
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from blockwise import problems, teachers
from blockwise.codec import REGISTRY as CODECS
from blockwise.codec import make_codec
from blockwise.codec.base import MAX_SET_ORDERS
from blockwise.config.schema import Check, Recipe


class RecipeError(ValueError):
    """A recipe that cannot run. Attributes: file, key_path ("" for the whole file), message.

    A ValueError, so that the command line reports it like any bad input (exit code 2).
    """

    def __init__(self, file: str | Path, key_path: str, message: str):
        # Key paths and messages quote the recipe, which may hold a key or a value of any
        # length: clipped, so that an error stays one readable line.
        key_path, message = clip(key_path, 200), clip(message, 500)
        self.file, self.key_path, self.message = str(file), key_path, message
        super().__init__(self.file, key_path, message)  # these args, so that it pickles

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key_path, self.message) if part)


def clip(text: str, limit: int) -> str:
    """`text`, cut to at most `limit` characters with an ellipsis if longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with numbers as a user means them: 1e-3 is a float (YAML 1.1 wants
    1.0e-3 and PyYAML would hand a learning rate written the usual way over as a string), and
    YAML 1.1's base 60 (1:30 is 90) and leading-zero octal (010 is 8) are not numbers, so an
    int or float field refuses them instead of taking a value nobody wrote."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


# Each alternative needs a digit: PyYAML's constructors fail outside YAMLError on "0x_" or "._".
_Loader.add_implicit_resolver(
    _INT,
    re.compile(
        r"""^(?:[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0b[01_]*[01][01_]*
        |[-+]?0x[0-9a-fA-F_]*[0-9a-fA-F][0-9a-fA-F_]*)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9_]*[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

# An alias repeats a value without copying it, so a few lines of anchors can stand for billions
# of values: a recipe needs a few hundred, so anything past these limits is refused unexpanded.
MAX_VALUES = 10_000
MAX_DEPTH = 32


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """The recipe in YAML file `path`, with `key.path=value` overrides applied in order.

    Omitted fields take their defaults; a file without `name` is named after the file. A
    recipe to run must fit in this machine's memory (`recipe_from_dict`, which also reads the
    recipes that runs and checkpoints saved, does not ask: loading a stack rolls nothing out).
    """
    overrides = list(overrides)
    data = _read(path)
    for override in overrides:
        _apply(data, override, path)
    named_after_file = "name" not in data
    data.setdefault("name", Path(path).stem)
    try:
        recipe = recipe_from_dict(data, path)
        _check_memory(recipe, str(path))
        return recipe
    except RecipeError as err:
        culprits = [o for o in overrides if _related(o.partition("=")[0], err.key_path)]
        if culprits:
            source = f"from --set {clip(culprits[-1], 100)}"
        elif named_after_file and err.key_path == "name":
            source = "the file's name; give the recipe a name: key"
        else:
            raise
        raise RecipeError(path, err.key_path, f"{err.message} ({source})") from None


def recipe_from_dict(data: Any, file: str | Path = "<recipe>") -> Recipe:
    """The recipe described by a mapping as YAML gives it; errors name `file`."""
    for key, value in data.items() if isinstance(data, dict) else [("", data)]:
        _check_size(value, str(file), str(key))
    return _resolve(_build(Recipe, data, "", str(file)), str(file))


# Fields added after runs were saved, with the value that reproduces what those runs computed
# (not today's default): filled into a saved, resolved recipe that lacks them. Section ""
# is the recipe's top level.
ADDED_LATER = {
    ("", "tied"): False,
    ("finetune", "objective"): "frame_mse",
    ("codec", "vertex_f"): "own",
    ("train", "set_loss"): False,
    ("train", "objective"): "frame_mse",
    ("train", "error_scale"): 1.0,
    ("eval", "shuffled"): False,
}

# Fields removed because they did nothing, with the value every saved recipe holds: dropped from
# a saved recipe that holds it. A recipe that sets one is refused with the reason.
REMOVED = {
    ("finetune", "workers"): (
        1, "not a setting: fine-tuning trains the whole stack in one process (train.workers "
        "sets how many blocks pretrain at once)",
    ),
}


# Fields whose type changed, with each old value's meaning in the new type: a saved recipe
# holding an old value reads as what it computed.
RETYPED = {("codec", "frame"): {True: "scale", False: "none"}}


def saved_recipe(data: Any) -> Any:
    """A resolved recipe as a run directory or checkpoint saved it (a mapping), with the
    fields it predates filled in as `ADDED_LATER` says, old values of fields `RETYPED` since
    translated and those `REMOVED` since dropped."""
    if not isinstance(data, dict):
        return data
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for (section, key), value in ADDED_LATER.items():
        fields = data.get(section) if section else data
        if isinstance(fields, dict):
            fields.setdefault(key, value)
    for (section, key), meaning in RETYPED.items():
        fields = data.get(section)
        if isinstance(fields, dict) and type(fields.get(key)) is bool:
            fields[key] = meaning[fields[key]]
    for (section, key), (value, _) in REMOVED.items():
        fields = data.get(section)
        if isinstance(fields, dict) and type(fields.get(key)) is type(value):
            if fields[key] == value:
                del fields[key]
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
    data = _parse(text, path, "")
    if not isinstance(data, dict):
        _check_size(data, str(path), "")
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
    value = _parse(text, file, key, f" (from --set {clip(override, 100)})")
    _check_size(value, str(file), key)
    node = data
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            raise RecipeError(file, where, f"is not a section (from --set {override})")
    node[parts[-1]] = value


def _parse(text: str, file: str | Path, key_path: str, source: str = "") -> Any:
    """YAML `text` (a file's or a `--set` value), with `source` appended to any error."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        # A --set value is one line, where the problem alone says it; a file's needs the mark.
        why = (getattr(err, "problem", None) if source else None) or err
        message = f"not valid YAML: {why}"
    # PyYAML lets some errors out as others: a date like 2024-13-01 or an int of more than
    # 4300 digits as ValueError, deep nesting ([[[[...) as RecursionError while composing.
    except ValueError as err:
        message = f"not valid YAML: {err}"
    except RecursionError:
        message = "not valid YAML: nested too deeply"
    raise RecipeError(file, key_path, message + source)


def _check_size(value: Any, file: str, where: str) -> None:
    """Refuse a value of more than MAX_VALUES values or MAX_DEPTH levels, counted with YAML
    aliases expanded, without expanding them (an alias bomb stops after MAX_VALUES steps, a
    value that contains itself too)."""
    todo, count = [(value, 0)], 0
    while todo:
        item, depth = todo.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise RecipeError(
                file, where, f"too large: more than {MAX_VALUES} values or {MAX_DEPTH} levels "
                "with aliases expanded (a recipe needs a few hundred; write it out without "
                "anchors and aliases)",
            )
        if isinstance(item, dict):
            todo += [(child, depth + 1) for child in itertools.chain(item, item.values())]
        elif isinstance(item, (list, tuple)):
            todo += [(child, depth + 1) for child in item]


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
            removed = REMOVED.get((path, key))
            raise RecipeError(file, where, removed[1] if removed else _unknown(key, fields))
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
    """A value as the recipe's author would write it (null, true, "text"), cut to 200
    characters."""
    try:
        text = json.dumps(value, default=repr)
    except TypeError:  # a key JSON cannot write, such as a YAML date
        text = repr(value)
    return clip(text, 200)


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
    frame = recipe.codec.frame
    if frame == "auto":
        frame = "affine" if "affine" in CODECS[t.name].frame_kinds else "scale"
    try:
        codec = make_codec(teacher, problem, recipe.codec.mode, frame, recipe.codec.vertex_f)
    except (TypeError, ValueError) as err:
        raise RecipeError(file, "codec", str(err)) from None
    for stage in ("train", "finetune"):
        unknown = [k for k in getattr(recipe, stage).loss_weights if k not in codec.learned_fields]
        if unknown:
            not_learned = [k for k in teacher.state_fields if k not in codec.learned_fields]
            raise RecipeError(
                file, f"{stage}.loss_weights",
                f"unknown field(s) {', '.join(unknown)}; {t.name}'s codec learns "
                f"{', '.join(codec.learned_fields)} (and carries "
                f"{', '.join(not_learned) or 'nothing'} over unlearned)",
            )
    if recipe.train.set_loss and not codec.vertex_set:
        raise RecipeError(
            file, "train.set_loss",
            f"expected false: {t.name}'s codec outputs no points that its decode re-sorts, so "
            "the order of its outputs is not free",
        )
    if recipe.train.set_loss:
        points = codec.placements[codec.vertex_set[0]].shape[0]
        if math.factorial(points) > MAX_SET_ORDERS:
            raise RecipeError(
                file, "train.set_loss",
                f"expected false for n = {p.dim}: the loss scores every order of the "
                f"{points} output points, {math.factorial(points)} of them, and takes at most "
                f"{MAX_SET_ORDERS}",
            )
    if recipe.tied and recipe.pairing != "shared":
        raise RecipeError(
            file, "tied",
            f"expected false unless pairing is shared (one block applied at every layer must "
            f"learn every step), got true with pairing {recipe.pairing}",
        )
    if recipe.train.objective == "frame_mse" and recipe.train.error_scale != 1.0:
        raise RecipeError(
            file, "train.error_scale",
            f"expected 1 with train.objective frame_mse (the scale belongs to log_normalized), "
            f"got {recipe.train.error_scale:g}",
        )
    f = recipe.finetune
    if f.balance_layers and f.objective == "optimize":
        raise RecipeError(
            file, "finetune.balance_layers",
            "expected false with finetune.objective optimize (its per-layer loss is already a "
            "log), got true",
        )
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
        codec=dataclasses.replace(recipe.codec, frame=frame),
    )


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows), or no such name
        return None


def _check_memory(recipe: Recipe, file: str) -> None:
    """Refuse a recipe whose run could not fit in this machine's memory, estimated from one
    problem and its teacher's first state: every problem's parameters and K + 1 states (the
    three sets are rolled out and held together), and the stack's weights with their gradients
    and Adam's two moments (fine-tuning trains all K blocks at once, or a tied stack's one). A
    lower bound, so that a recipe refused here could never run."""
    p, d, b = recipe.problem, recipe.data, recipe.block
    problem = problems.make(p.family, batch=1, dim=p.dim, seed=d.train_seed, **p.settings)
    x0 = problem.sample_x0(seed=d.train_seed, radius=p.x0_radius)
    state = teachers.make(recipe.teacher.name, **recipe.teacher.settings).init(problem, x0)
    count = d.train_problems + d.val_problems + d.test_problems
    per_problem = _bytes(problem.params.values()) + (recipe.steps + 1) * _bytes(state.values())
    blocks = 1 if recipe.tied else recipe.steps
    weights = blocks * (4 + 2 * b.mlp_ratio) * b.width**2 * 4 * 4  # float32, 4 copies
    need, have = int(count * per_problem + weights), physical_memory()
    if have is not None and need > have:
        raise RecipeError(
            file, "data",
            f"needs about {need // 2**20} MiB (problems {count} x (steps + 1) states of "
            f"{_bytes(state.values())} bytes, and the blocks' weights), more than this "
            f"machine's {have // 2**20} MiB of memory; lower data.train_problems, "
            "data.val_problems, data.test_problems, steps, problem.dim or block.width",
        )


def _bytes(tensors: Iterable[Any]) -> int:
    """Bytes per problem of tensors with a batch dimension of one."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
