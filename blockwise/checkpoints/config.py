"""config.json: written from a stack and its recipe (`describe`), read back and checked field
by field (`read_config`). The fields are documented in the package docstring."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

import safetensors
import torch

import blockwise
from blockwise.config import (
    BlockConfig,
    Recipe,
    RecipeError,
    recipe_from_dict,
    recipe_to_dict,
    saved_recipe,
)
from blockwise.config.load import RETYPED
from blockwise.files import left_aside
from blockwise.jsonable import to_jsonable
from blockwise.stack import Stack

FORMAT_VERSION = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"
STAGES = ("stacked", "finetuned", "looped")

PICKLES = (".ckpt", ".pt", ".pth", ".pkl", ".pickle", ".bin")
NO_PICKLES = (
    "blockwise never unpickles (loading a pickle can run arbitrary code), and Lightning .ckpt "
    "files are for resuming training only; a stacked checkpoint is a directory holding "
    f"{CONFIG} and {WEIGHTS}, written by blockwise.save_stack"
)

# Upper bounds on what config.json may ask for. Rebuilding a stack builds `depth` blocks, a
# problem instance of dimension `dim` (a quadratic's is dim x dim) and a codec; a hostile
# config.json must neither exhaust memory nor hang. Each bound is far above any stack trained
# here (the shipped ones: depth 5, dim 2, width 64). A checkpoint past one is refused with a
# CheckpointError, by read_config, load_stack and so `blockwise eval`, which prints it and
# exits 1.
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few KiB, mostly metrics
MAX_DEPTH = 1024
SIZES = {
    (None, "depth"): MAX_DEPTH,
    ("codec", "dim"): 1024,
    ("codec", "token_dim"): 2**16,
    ("codec", "num_tokens"): 2**16,
    ("block", "width"): 2**16,
    ("block", "heads"): 2**16,
}
MAX_MLP_RATIO = 64
MAX_COUNT = 4096  # an integer teacher or problem setting: CMA's popsize, n_context, ...
MAX_RANK, MAX_SIZE = 4, 2**32  # of each shape in `tensors`
BLOCK_NAME = re.compile(r"blocks\.(\d{1,9})\.")  # longer indices are caught as unexpected names
FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device (/dev/zero?)",
              stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}

# config.json's fields and their JSON types; `codec` and `block` hold exactly SECTIONS' keys.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int, "stage": str, "recipe": dict, "codec": dict, "block": dict,
    "depth": int, "looped": bool, "tensors": dict, "versions": dict, "metrics": (dict, type(None)),
}
SECTIONS = {
    "codec": ("teacher", "teacher_settings", "family", "dim", "problem_settings", "mode",
              "frame", "token_dim", "num_tokens"),
    "block": tuple(f.name for f in dataclasses.fields(BlockConfig)),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded. Attributes: file (the culprit), message.

    A ValueError, so that the command line reports it like any bad input.
    """

    def __init__(self, file: str | Path, message: str):
        self.file, self.message = str(file), message
        super().__init__(self.file, message)  # these args, so that it pickles

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def describe(
    stack: Stack, recipe: Recipe, shapes: dict[str, list[int]], metrics: dict | None, stage: str
) -> dict[str, Any]:
    """config.json's contents for `stack` (tensor shapes `shapes`) built from resolved `recipe`."""
    codec = stack.codec
    return {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "recipe": recipe_to_dict(recipe),
        "codec": {
            "teacher": codec.name,
            "teacher_settings": dataclasses.asdict(codec.teacher),
            "family": codec.family,
            "dim": codec.dim,
            # The codec keeps only the layout of a problem; its settings come from the recipe.
            "problem_settings": dict(recipe.problem.settings),
            "mode": codec.mode,
            "frame": codec.frame,
            "token_dim": codec.token_dim,
            "num_tokens": codec.num_tokens,
        },
        "block": dataclasses.asdict(recipe.block),
        "depth": stack.depth,
        "looped": stack.looped,
        "tensors": shapes,
        "versions": {
            "blockwise": blockwise.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
        },
        "metrics": None if metrics is None else to_jsonable(metrics, "metrics"),
    }


def read_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint directory `path`'s config.json, checked field by field (without
    reading the weights: for tools that want the metrics or the recipe).

    Every size that would drive an allocation or a loop when the stack is rebuilt is checked
    against its bound (`SIZES`) before anything is built, so that a hostile config.json can
    neither exhaust memory nor hang.
    """
    file = checkpoint_dir(Path(path)) / CONFIG
    config = _parse(file, read_regular(file, MAX_CONFIG_BYTES))
    _check_fields(file, config)
    _check_sizes(file, config)
    _check_tensors(file, config)
    _retype_codec(config)
    config["recipe"] = _check_recipe(file, config)
    return config


def _retype_codec(config: dict[str, Any]) -> None:
    """codec.frame as today's kind: checkpoints saved when it was a bool hold true (the scale
    frame) or false (none), as their recipe does (`saved_recipe` translates that)."""
    frame = config["codec"]["frame"]
    if type(frame) is bool:
        config["codec"]["frame"] = RETYPED[("codec", "frame")][frame]


def checkpoint_dir(path: Path) -> Path:
    """`path` if it is a directory holding both files; else an error saying what is wrong."""
    if path.suffix.lower() in PICKLES and not path.is_dir():
        raise CheckpointError(path, f"refusing to load a {path.suffix} file: {NO_PICKLES}")
    if path.name == CONFIG and not path.is_dir():
        raise CheckpointError(
            path, f"this is a checkpoint's {CONFIG}: pass its directory, {path.parent}"
        )
    if not path.exists():
        aside = left_aside(path)
        hint = f"; an interrupted save left the previous one at {aside}" if aside else ""
        raise CheckpointError(path, f"no such checkpoint directory{hint}")
    if not path.is_dir():
        raise CheckpointError(
            path, f"not a directory: a checkpoint is a directory holding {CONFIG} and {WEIGHTS}"
        )
    # lexists: a dangling link is present, and reading it says what is wrong with it.
    missing = [name for name in (CONFIG, WEIGHTS) if not os.path.lexists(path / name)]
    if missing:
        present = sorted(p.name for p in path.iterdir())
        pickles = [name for name in present if Path(name).suffix.lower() in PICKLES]
        if pickles:
            raise CheckpointError(
                path, f"holds {', '.join(pickles)} but no {' or '.join(missing)}: {NO_PICKLES}"
            )
        shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "")
        raise CheckpointError(
            path, f"missing {', '.join(missing)} (it holds {shown or 'nothing'})"
        )
    return path


def open_regular(file: Path) -> BinaryIO:
    """`file` opened for reading if it is a regular file (links followed); else CheckpointError.

    It is opened without blocking, since opening a FIFO that has no writer waits forever, and
    its kind is checked on the open file, so that nothing can be swapped in between.
    """
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CheckpointError(file, "no such file (or a link to nothing)") from None
    except OSError as err:
        raise CheckpointError(file, f"cannot open it: {err.strerror}") from None
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        found = FILE_KINDS.get(kind, "a special file")
        raise CheckpointError(file, f"expected a regular file, found {found}")
    return os.fdopen(fd, "rb")


def read_regular(file: Path, limit: int) -> bytes:
    """The bytes of the regular file `file`, refused if it holds more than `limit`."""
    with open_regular(file) as f:
        try:
            data = f.read(limit + 1)
        except OSError as err:
            raise CheckpointError(file, f"cannot read it: {err.strerror}") from None
    if len(data) > limit:
        raise CheckpointError(
            file, f"larger than {limit // 2**20} MiB; a checkpoint's {CONFIG} is a few KiB"
        )
    return data


def _parse(file: Path, data: bytes) -> dict[str, Any]:
    try:
        config = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise CheckpointError(file, "invalid JSON (nested too deeply)") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an int of 4300+ digits
        raise CheckpointError(file, f"invalid JSON ({_clip(str(err))})") from None
    if not isinstance(config, dict):
        raise CheckpointError(file, "expected a JSON object")
    return config


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON (save_stack writes none)")


def _check_fields(file: Path, config: dict[str, Any]) -> None:
    # The version first: a newer format may have other fields, and that is the real news.
    version = config.get("format_version")
    if _is(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            file, f"format_version {_show(version)} was written by a newer blockwise (this one "
            f"reads up to {FORMAT_VERSION}); upgrade blockwise to load it"
        )
    _check_keys(file, "", config, FIELDS)
    for name, kind in FIELDS.items():
        if not _is(config[name], kind):
            raise CheckpointError(
                file, f"{name}: expected {_json_type(kind)}, got {_show(config[name])}"
            )
    if version < 1:
        raise CheckpointError(file, f"format_version: expected >= 1, got {_show(version)}")
    for name, keys in SECTIONS.items():
        _check_keys(file, f"{name}.", config[name], keys)
    if config["stage"] not in STAGES:
        raise CheckpointError(
            file, f"stage: expected one of {STAGES}, got {_show(config['stage'])}"
        )


def _check_sizes(file: Path, config: dict[str, Any]) -> None:
    for (section, key), limit in SIZES.items():
        value = config[section][key] if section else config[key]
        if not (_is(value, int) and 1 <= value <= limit):
            where = f"{section}.{key}" if section else key
            raise CheckpointError(
                file, f"{where}: expected an integer in [1, {limit}], got {_show(value)}"
            )
    ratio = config["block"]["mlp_ratio"]
    if not (_is(ratio, (int, float)) and 0 <= ratio <= MAX_MLP_RATIO):
        raise CheckpointError(
            file, f"block.mlp_ratio: expected a number in [0, {MAX_MLP_RATIO}], got {_show(ratio)}"
        )
    for name in ("teacher_settings", "problem_settings"):
        settings = config["codec"][name]
        if not isinstance(settings, dict):
            raise CheckpointError(file, f"codec.{name}: expected an object, got {_show(settings)}")
        for key, value in settings.items():
            # An integer setting counts something to allocate (CMA's popsize, least squares'
            # n_context), except a seed.
            if _is(value, int) and key != "seed" and not 0 <= value <= MAX_COUNT:
                raise CheckpointError(
                    file, f"codec.{name}.{_clip(key)}: expected an integer in [0, {MAX_COUNT}], "
                    f"got {_show(value)}"
                )


def _check_tensors(file: Path, config: dict[str, Any]) -> None:
    """Each shape a short list of sizes, and the blocks listed the ones `depth` implies, so that
    a depth the weights do not hold is refused before a block is built."""
    for name, shape in config["tensors"].items():
        if not (isinstance(shape, list) and len(shape) <= MAX_RANK
                and all(_is(n, int) and 0 <= n <= MAX_SIZE for n in shape)):
            raise CheckpointError(
                file, f"tensors.{_clip(name)}: expected a shape (a list of at most {MAX_RANK} "
                f"integers in [0, {MAX_SIZE}]), got {_show(shape)}"
            )
    listed = {int(m[1]) for name in config["tensors"] if (m := BLOCK_NAME.match(name))}
    depth, looped = config["depth"], config["looped"]
    if listed != set(range(1 if looped else depth)):
        stack = "a looped stack holds blocks.0 only" if looped else (
            f"a stack of depth {depth} holds blocks.0 to blocks.{depth - 1}")
        raise CheckpointError(
            file, f"tensors lists blocks {_indices(listed)}, but {stack} (depth: {depth}, "
            f"looped: {json.dumps(looped)})"
        )


def _check_recipe(file: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The saved recipe, checked by the recipe loader and against the codec and block fields
    (save_stack writes both from one recipe). They are compared first: the loader builds a
    problem and a teacher, and the sizes it would build them with are the ones checked above."""
    recipe = saved_recipe(config["recipe"])
    codec = config["codec"]
    pairs = {
        ("problem", "family"): codec["family"], ("problem", "dim"): codec["dim"],
        ("problem", "settings"): codec["problem_settings"], ("teacher", "name"): codec["teacher"],
        ("teacher", "settings"): codec["teacher_settings"], ("codec", "mode"): codec["mode"],
        ("codec", "frame"): codec["frame"],
        **{("block", key): value for key, value in config["block"].items()},
    }
    for (section, key), expected in pairs.items():
        found = recipe.get(section, {}).get(key, "(missing)") if isinstance(
            recipe.get(section), dict) else "(missing)"
        if found != expected:
            theirs = {"problem": "codec", "teacher": "codec", "codec": "codec", "block": "block"}
            raise CheckpointError(
                file, f"recipe.{section}.{key} is {_show(found)}, but the {theirs[section]} "
                f"field says {_show(expected)}; save_stack writes both from one recipe"
            )
    try:
        recipe_from_dict(recipe, file)
    except RecipeError as err:
        raise CheckpointError(file, f"recipe.{err.key_path}: {err.message}") from None
    return recipe


def _check_keys(file: Path, where: str, found: dict, expected) -> None:
    unknown = [where + k for k in found if k not in expected]
    missing = [where + k for k in expected if k not in found]
    words = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
    words += [f"missing field(s) {', '.join(missing)}"] if missing else []
    if words:
        raise CheckpointError(file, "; ".join(words))


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    # JSON's true is not an integer here, though Python's bool is an int.
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _json_type(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", dict: "an object", bool: "true or false",
             type(None): "null"}
    return " or ".join(names[k] for k in (kind if isinstance(kind, tuple) else (kind,)))


def _show(value: Any) -> str:
    """`value` as JSON, cut short: an error message never prints a hostile value in full."""
    try:
        return _clip(json.dumps(value, ensure_ascii=False))
    except RecursionError:
        return "a value nested too deeply to show"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _indices(indices: set[int]) -> str:
    if not indices:
        return "none"
    ordered = sorted(indices)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]} to {ordered[-1]}" if len(ordered) > 1 else str(ordered[0])
    return ", ".join(map(str, ordered[:8])) + (", ..." if len(ordered) > 8 else "")
