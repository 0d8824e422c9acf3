"""Printable documentation of every recipe field, read from the schema itself."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import typing
from typing import Any

from blockwise.config.load import expectation
from blockwise.config.schema import Recipe

HEADER = """\
A recipe is a YAML mapping of the keys below; every key may be omitted and takes the default
shown. Override any of them on the command line with --set key.path=value (the value is YAML).
An unknown key, a wrong type or an impossible value stops before any work, with exit code 2,
and so does a recipe whose rollout and weights could not fit in this machine's memory. Numbers
are written as usual (1e-3, 0x10, 1_000); YAML 1.1's base 60 (1:30) and octal (010) are not."""


def describe_recipe() -> str:
    """Every field: key path, what it takes, default and doc, top-level keys first, then one
    group per section."""
    top, sections = [], []
    hints = typing.get_type_hints(Recipe)
    for field in dataclasses.fields(Recipe):
        if dataclasses.is_dataclass(hints[field.name]):
            sections.append(_section(field.name, field.metadata["doc"], field.default_factory()))
        else:
            top.append(_entry(field.name, hints[field.name], field, field.default))
    return "\n\n".join([HEADER, "\n".join(top), *sections]) + "\n"


def _section(name: str, doc: str, defaults: Any) -> str:
    hints = typing.get_type_hints(type(defaults))
    entries = [
        _entry(f"{name}.{f.name}", hints[f.name], f, getattr(defaults, f.name))
        for f in dataclasses.fields(defaults)
    ]
    return "\n".join([f"{name}: {doc}", *entries])


def _entry(key_path: str, tp: Any, field: dataclasses.Field, default: Any) -> str:
    # "key: default" reads as the YAML line to write; what it takes and why follow, wrapped.
    takes = expectation(tp, field.metadata["check"])
    text = f"{takes[0].upper()}{takes[1:]}. {field.metadata['doc']}"
    body = textwrap.fill(text, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return f"  {key_path}: {json.dumps(default)}\n{body}"
