"""save_stack and load_stack: a Stack to a checkpoint directory and back, checked both ways.

Saving checks that the recipe rebuilds the stack it is stored with; loading rebuilds the
stack from config.json alone, checks every tensor's name and shape, and loads strictly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load_file, save_file

from blockwise import problems, teachers
from blockwise.checkpoints.config import (
    CONFIG,
    FORMAT_VERSION,
    STAGES,
    WEIGHTS,
    CheckpointError,
    describe,
    open_regular,
    read_config,
)
from blockwise.codec import make_codec
from blockwise.config import Recipe, recipe_from_dict, recipe_to_dict
from blockwise.files import replace_dir
from blockwise.model import Block, ReadIO
from blockwise.stack import Stack

DIFF_LINES = 10


def save_stack(
    stack: Stack,
    recipe: Recipe,
    path: str | Path,
    metrics: dict | None = None,
    stage: str = "finetuned",
) -> Path:
    """Write `stack` and what rebuilds it to the directory `path`, atomically; return `path`.

    An existing checkpoint at `path` is replaced: a crash at any point leaves the old one or
    the new one there, never a partial directory. Raises ValueError if `stack` was not built
    from `recipe` (a checkpoint must rebuild the model it holds), or if `path` holds anything
    but a checkpoint (it is not deleted).
    """
    path = Path(path)
    if stage not in STAGES:
        raise ValueError(f"save_stack: stage must be one of {STAGES}, got {stage!r}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_stack: {path} exists and is not a directory; not replacing it")
    others = sorted({p.name for p in path.iterdir()} - {CONFIG, WEIGHTS}) if path.exists() else []
    if others:
        raise ValueError(f"save_stack: {path} holds {', '.join(others)}, so it is not a "
                         "checkpoint directory; not replacing it")
    # Round trip through the loader so that what is stored is the resolved recipe.
    recipe = recipe_from_dict(recipe_to_dict(recipe))
    state = {name: t.detach().cpu().contiguous() for name, t in stack.state_dict().items()}
    config = describe(stack, recipe, _shapes(state), metrics, stage)
    _check_stack(stack, recipe, config)
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    metadata = {"format": "pt", "blockwise_format": str(FORMAT_VERSION), "stage": stage}

    def write(directory: Path) -> None:
        (directory / CONFIG).write_text(text, encoding="utf-8")
        save_file(state, directory / WEIGHTS, metadata=metadata)

    replace_dir(path, write)
    return path


def load_stack(path: str | Path, device: str | torch.device = "cpu") -> Stack:
    """The stack saved in the directory `path`, its tensors on `device`, in eval mode."""
    config = read_config(path)
    path = Path(path)
    stack = _skeleton(config, path / CONFIG)
    mismatch = _diff(config["tensors"], _shapes(stack.state_dict()))
    if mismatch:
        raise CheckpointError(path / CONFIG, "tensors does not match the model that codec, "
                                             f"block and depth describe: {mismatch}")
    weights = path / WEIGHTS
    state = _read_weights(weights, device)
    mismatch = _diff(_shapes(state), config["tensors"])
    if mismatch:
        raise CheckpointError(weights, f"tensors do not match {CONFIG}: {mismatch}")
    # The skeleton's parameters live on the meta device; assign=True makes them the loaded
    # tensors, with their dtype and device.
    stack.load_state_dict(state, strict=True, assign=True)
    return stack.eval()


def _read_weights(file: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    """The tensors in the safetensors file `file`. safetensors checks the header's offsets
    and shapes against the file; the header's own length is checked here, to say so plainly."""
    with open_regular(file) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
    declared = int.from_bytes(head, "little") if len(head) == 8 else None
    if declared is None or declared > size - 8:
        found = "shorter than its 8-byte header length" if declared is None else (
            f"its header declares {declared} bytes, the file holds {size - 8} after the length")
        raise CheckpointError(file, f"not a safetensors file, truncated or corrupt: {found}")
    try:
        return load_file(file, device=str(torch.device(device)))
    except safetensors.SafetensorError as err:
        raise CheckpointError(
            file, f"not a readable safetensors file, truncated or corrupt ({err})"
        ) from None


def _check_stack(stack: Stack, recipe: Recipe, config: dict) -> None:
    """ValueError unless config.json, built from `recipe`, rebuilds `stack`."""
    codec, p, t, c = config["codec"], recipe.problem, recipe.teacher, recipe.codec
    expected = {"teacher": t.name, "teacher_settings": t.settings, "family": p.family,
                "dim": p.dim, "mode": c.mode, "frame": c.frame}
    wrong = [f"{k} is {codec[k]!r}, the recipe says {v!r}"
             for k, v in expected.items() if codec[k] != v]
    if stack.codec.vertex_f != c.vertex_f:
        wrong.append(f"vertex_f is {stack.codec.vertex_f!r}, the recipe says {c.vertex_f!r}")
    if wrong:
        raise ValueError(f"save_stack: the stack's codec does not match the recipe: "
                         f"{'; '.join(wrong)}")
    # Shapes cannot show these settings; the skeleton below checks the rest.
    b = recipe.block
    settings = (b.norm, b.attention, b.heads, b.dropout)
    for i, block in enumerate(stack.blocks):
        found = (block.norm, block.attn.kind, block.attn.heads, block.drop.p)
        if found != settings:
            raise ValueError(
                f"save_stack: block {i + 1} does not match recipe.block: (norm, attention, "
                f"heads, dropout) = {found}, the recipe says {settings}"
            )
    mismatch = _diff(config["tensors"], _shapes(_skeleton(config, "save_stack").state_dict()))
    if mismatch:
        raise ValueError(f"save_stack: the stack does not match recipe.block: {mismatch}")


def _skeleton(config: dict, file: str | Path) -> Stack:
    """The stack config.json describes, its parameters on the meta device (no storage)."""
    c, b = config["codec"], config["block"]
    try:
        teacher = teachers.make(c["teacher"], **c["teacher_settings"])
        # One instance gives the layout of the problem tokens; its values do not matter.
        problem = problems.make(
            c["family"], batch=1, dim=c["dim"], seed=0, **c["problem_settings"]
        )
        # A setting of what passes between layers, not of the layout: the recipe holds it
        # (recipes saved before it existed read as "own").
        vertex_f = config["recipe"].get("codec", {}).get("vertex_f", "own")
        codec = make_codec(teacher, problem, c["mode"], c["frame"], vertex_f)
        with torch.device("meta"):
            readio = ReadIO(codec.token_dim, b["width"])
            blocks = [Block(**b) for _ in range(1 if config["looped"] else config["depth"])]
            stack = Stack(codec, readio, blocks, config["looped"], config["depth"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(file, f"cannot rebuild the stack: {err}") from None
    if (codec.token_dim, codec.num_tokens) != (c["token_dim"], c["num_tokens"]):
        raise CheckpointError(
            file, f"codec: the rebuilt codec has token_dim {codec.token_dim} and num_tokens "
            f"{codec.num_tokens}, {CONFIG} says {c['token_dim']} and {c['num_tokens']}"
        )
    return stack


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in state.items()}


def _diff(found: dict[str, list], expected: dict[str, list]) -> str:
    """Each tensor missing from `found`, unexpected in it or of the wrong shape; "" if none.
    At most DIFF_LINES of them: a hostile file may list a million names."""
    lines = [f"missing {n} {expected[n]}" for n in expected if n not in found]
    lines += [f"unexpected {n[:80]} {found[n]}" for n in found if n not in expected]
    lines += [f"{n} has shape {found[n]}, expected {expected[n]}"
              for n in found if n in expected and found[n] != expected[n]]
    more = [f"and {len(lines) - DIFF_LINES} more"] if len(lines) > DIFF_LINES else []
    return "; ".join(lines[:DIFF_LINES] + more)
