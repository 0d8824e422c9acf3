"""config.json: written from a stack and its recipe (`describe`), read back and checked field
by field (`read_config`). The fields are documented in the package docstring."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

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
from blockwise.stack import Stack

FORMAT_VERSION = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"
STAGES = ("stacked", "finetuned", "looped")

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
            "frame": codec.framed,
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
        "metrics": None if metrics is None else _jsonable(metrics, "metrics"),
    }


def read_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint directory `path`'s config.json, checked field by field (without
    reading the weights: for tools that want the metrics or the recipe)."""
    file = Path(path) / CONFIG
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(file, "no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(file, f"invalid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(file, "expected a JSON object")
    # The version first: a newer format may have other fields, and that is the real news.
    version = config.get("format_version")
    if _is(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            file, f"format_version {version} was written by a newer blockwise (this one reads "
            f"up to {FORMAT_VERSION}); upgrade blockwise to load it"
        )
    _check_keys(file, "", config, FIELDS)
    for name, kind in FIELDS.items():
        if not _is(config[name], kind):
            raise CheckpointError(
                file, f"{name}: expected {_json_type(kind)}, got {json.dumps(config[name])}"
            )
    if version < 1:
        raise CheckpointError(file, f"format_version: expected >= 1, got {version}")
    for name, keys in SECTIONS.items():
        _check_keys(file, f"{name}.", config[name], keys)
    if config["stage"] not in STAGES:
        raise CheckpointError(file, f"stage: expected one of {STAGES}, got {config['stage']!r}")
    config["recipe"] = saved_recipe(config["recipe"])
    try:
        recipe_from_dict(config["recipe"], file)
    except RecipeError as err:
        raise CheckpointError(file, f"recipe.{err.key_path}: {err.message}") from None
    return config


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


def _jsonable(value: Any, where: str) -> Any:
    """`value` as plain JSON: 0-d tensors and numpy scalars unwrapped, NaN and inf as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"save_stack: {where} is a {type(value).__name__}, not a JSON value")
