"""Stacked checkpoints: exact round trips, atomic replacement, and a named error per bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from blockwise import CheckpointError, load_stack, problems, read_config, save_stack
from blockwise.checkpoints import config as saveload_config
from blockwise.checkpoints import saveload
from blockwise.config import recipe_from_dict, recipe_to_dict
from blockwise.model import ReadIO
from blockwise.stack import Stack
from blockwise.teachers import make as make_teacher
from blockwise.training.pretrain import build_codec, new_block

K = 3


@pytest.fixture(scope="module")
def recipe():
    return recipe_from_dict({
        "name": "tiny", "steps": K,
        "problem": {"family": "quadratic", "dim": 2, "settings": {"condition": 10.0}},
        "teacher": {"name": "nelder_mead"},
        "block": {"width": 32, "heads": 2, "mlp_ratio": 2.0},
    })


@pytest.fixture(scope="module")
def problem():
    return problems.make("quadratic", batch=4, dim=2, seed=3, condition=10.0)


def make_stack(recipe, problem, looped=False, seed_layer=1) -> Stack:
    """An untrained stack; the read-in/read-out perturbed so that they are not the identity."""
    codec = build_codec(recipe, problem)
    readio = ReadIO(codec.token_dim, recipe.block.width)
    with torch.no_grad():
        readio.read_in.weight.add_(0.01 * torch.randn_like(readio.read_in.weight))
    if looped:
        return Stack(codec, readio, [new_block(recipe, seed_layer)], looped=True, depth=K).eval()
    blocks = [new_block(recipe, seed_layer + k) for k in range(K)]
    return Stack(codec, readio, blocks).eval()


def outputs(stack: Stack, problem) -> list[dict]:
    state = make_teacher("nelder_mead").init(problem, problem.sample_x0(seed=1))
    with torch.no_grad():
        return stack(problem, state)


def assert_same(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[f], y[f]) for f in x)


@pytest.fixture
def saved(recipe, problem, tmp_path) -> Path:
    return save_stack(make_stack(recipe, problem), recipe, tmp_path / "ckpt", stage="stacked")


@pytest.mark.parametrize("looped", [False, True], ids=["stacked", "looped"])
def test_round_trip_reproduces_the_stack_exactly(recipe, problem, tmp_path, looped):
    stack = make_stack(recipe, problem, looped)
    path = save_stack(stack, recipe, tmp_path / "ckpt", stage="looped" if looped else "stacked")
    loaded = load_stack(path)
    assert not loaded.training
    assert (loaded.depth, loaded.looped, len(loaded.blocks)) == (K, looped, 1 if looped else K)
    assert_same(outputs(loaded, problem), outputs(stack, problem))
    with safe_open(path / "model.safetensors", "pt") as f:
        assert f.metadata() == {
            "format": "pt", "blockwise_format": "1", "stage": "looped" if looped else "stacked"
        }
        names = set(f.keys())
    assert "readio.read_in.weight" in names and "blocks.0.attn.qkv.weight" in names
    assert ("blocks.1.attn.qkv.weight" in names) != looped


@pytest.mark.parametrize("mode", ["in_context", "oracle"])
def test_every_teacher_codec_is_rebuilt(teacher, mode, problem, tmp_path):
    settings = dataclasses.asdict(teacher)
    recipe = recipe_from_dict({
        "name": "any", "steps": 2, "problem": {"family": "quadratic", "dim": 2},
        "teacher": {"name": teacher.name, "settings": settings}, "codec": {"mode": mode},
        "block": {"width": 64, "heads": 2},
    })
    codec = build_codec(recipe, problem)
    stack = Stack(codec, ReadIO(codec.token_dim, 64), [new_block(recipe, 1)], looped=True, depth=2)
    loaded = load_stack(save_stack(stack, recipe, tmp_path / "ckpt"))
    assert loaded.codec.describe() == codec.describe()
    assert dataclasses.asdict(loaded.codec.teacher) == settings
    expected = stack.state_dict()
    assert all(torch.equal(t, expected[name]) for name, t in loaded.state_dict().items())


def test_dtype_is_kept(recipe, problem, tmp_path):
    stack = make_stack(recipe, problem).double()
    loaded = load_stack(save_stack(stack, recipe, tmp_path / "ckpt"))
    assert loaded.readio.read_in.weight.dtype == torch.float64
    assert_same(outputs(loaded, problem), outputs(stack, problem))


def test_metrics_are_stored_with_nan_as_null_and_inf_as_the_largest_float(
    recipe, problem, tmp_path
):
    metrics = {"loss": float("nan"), "depth": 3, "error": torch.tensor(0.5),
               "per_layer": (0.1, float("inf"), -float("inf"))}
    path = save_stack(make_stack(recipe, problem), recipe, tmp_path / "ckpt", metrics=metrics)
    config = read_config(path)
    big = sys.float_info.max
    assert config["metrics"] == {
        "loss": None, "depth": 3, "error": 0.5, "per_layer": [0.1, big, -big]
    }
    assert config["recipe"]["block"]["width"] == 32 and config["stage"] == "finetuned"
    assert set(config["versions"]) == {"blockwise", "torch", "safetensors"}


@pytest.mark.parametrize("block", [{"width": 64}, {"norm": "post"}, {"attention": "linear"}])
def test_a_stack_that_does_not_match_the_recipe_is_not_saved(recipe, problem, tmp_path, block):
    settings = recipe_to_dict(recipe)
    other = recipe_from_dict({**settings, "block": {**settings["block"], **block}})
    with pytest.raises(ValueError, match="does not match recipe.block"):
        save_stack(make_stack(recipe, problem), other, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_saving_over_a_checkpoint_replaces_it(recipe, problem, saved):
    new = make_stack(recipe, problem, seed_layer=7)
    save_stack(new, recipe, saved)
    assert_same(outputs(load_stack(saved), problem), outputs(new, problem))
    assert os.listdir(saved.parent) == [saved.name]  # nothing left beside it


def test_a_crash_at_the_commit_keeps_the_old_checkpoint(recipe, problem, saved, monkeypatch):
    old = outputs(load_stack(saved), problem)
    at_commit = {}
    real_replace = os.replace

    def replace(src, dst):
        if ".new-" not in Path(src).name:
            return real_replace(src, dst)
        # The moment a kill would do the most harm: nothing at `saved` looks complete and
        # the old checkpoint is whole beside it, where load_stack's error points.
        at_commit["exists"] = saved.exists()
        aside = next(saved.parent.glob(f".{saved.name}.old-*"))
        assert_same(outputs(load_stack(aside), problem), old)
        with pytest.raises(CheckpointError, match="interrupted save left the previous one"):
            load_stack(saved)
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_stack(make_stack(recipe, problem, seed_layer=7), recipe, saved)
    monkeypatch.undo()
    assert at_commit == {"exists": False}
    assert_same(outputs(load_stack(saved), problem), old)
    assert os.listdir(saved.parent) == [saved.name]


def test_a_crash_while_writing_leaves_the_old_checkpoint(recipe, problem, saved, monkeypatch):
    old = outputs(load_stack(saved), problem)

    def save_file_half(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(saveload, "save_file", save_file_half)
    with pytest.raises(OSError, match="disk full"):
        save_stack(make_stack(recipe, problem, seed_layer=7), recipe, saved)
    assert_same(outputs(load_stack(saved), problem), old)
    assert os.listdir(saved.parent) == [saved.name]


def test_a_directory_with_other_files_is_not_replaced(recipe, problem, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        save_stack(make_stack(recipe, problem), recipe, tmp_path / "ckpt")
    assert os.listdir(tmp_path / "ckpt") == ["notes.txt"]


def edit_config(path: Path, change) -> Path:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))
    return path


def edit_weights(path: Path, change) -> Path:
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors")
    return path


def truncate(path: Path) -> Path:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    return path


def corrupt_header(path: Path) -> Path:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    return path


def pickle_only(path: Path) -> Path:
    for name in ("config.json", "model.safetensors"):
        (path / name).unlink()
    (path / "last.ckpt").write_bytes(b"\x80\x04pickle")
    return path


def sibling(path: Path, name: str) -> Path:
    (path.parent / name).write_bytes(b"\x80\x04pickle")
    return path.parent / name


def rename_tensor(t: dict) -> None:
    t["blocks.0.attn.qkv.weights"] = t.pop("blocks.0.attn.qkv.weight")


# name -> (what breaks the saved checkpoint and returns the path to load, the file the error
# names, words the message must hold)
BAD = {
    "ckpt file": (lambda p: sibling(p, "last.ckpt"), "last.ckpt", "never unpickles"),
    "pt path": (lambda p: p.parent / "model.pt", "model.pt", "Lightning .ckpt files"),
    "pickle in directory": (pickle_only, "ckpt", "last.ckpt but no config.json"),
    "no directory": (lambda p: p.parent / "nothing", "nothing", "no such checkpoint"),
    "missing config": (
        lambda p: (p / "config.json").unlink() or p, "ckpt", "missing config.json"
    ),
    "missing weights": (
        lambda p: (p / "model.safetensors").unlink() or p, "ckpt", "missing model.safetensors"
    ),
    "truncated weights": (truncate, "model.safetensors", "truncated or corrupt"),
    "corrupt header": (corrupt_header, "model.safetensors", "truncated or corrupt"),
    "renamed tensor": (
        lambda p: edit_weights(p, rename_tensor), "model.safetensors",
        "missing blocks.0.attn.qkv.weight [96, 32]; unexpected blocks.0.attn.qkv.weights",
    ),
    "wrong shape": (
        lambda p: edit_weights(p, lambda t: t.update({"blocks.1.mlp.0.bias": torch.zeros(3)})),
        "model.safetensors", "blocks.1.mlp.0.bias has shape [3], expected [64]",
    ),
    "tensors unlike the block": (
        lambda p: edit_config(p, lambda c: [b.update(mlp_ratio=1.0)
                                            for b in (c["block"], c["recipe"]["block"])]),
        "config.json", "blocks.0.mlp.0.weight has shape [64, 32], expected [32, 32]",
    ),
    "codec unlike its token_dim": (
        lambda p: edit_config(p, lambda c: c["codec"].update(token_dim=5)), "config.json",
        "config.json says 5",
    ),
    "unknown field": (
        lambda p: edit_config(p, lambda c: c.update(extra=1)), "config.json",
        "unknown field(s) extra",
    ),
    "missing field": (
        lambda p: edit_config(p, lambda c: c["block"].pop("norm")), "config.json",
        "missing field(s) block.norm",
    ),
    "wrong type": (
        lambda p: edit_config(p, lambda c: c.update(depth="3")), "config.json",
        'depth: expected an integer, got "3"',
    ),
    "newer format": (
        lambda p: edit_config(p, lambda c: c.update(format_version=99, new_field=1)),
        "config.json", "written by a newer blockwise",
    ),
    "bad recipe": (
        lambda p: edit_config(p, lambda c: c["recipe"]["block"].update(heads=3)), "config.json",
        "recipe.block.heads",
    ),
    "invalid JSON": (
        lambda p: (p / "config.json").write_text("{\"format_version\": 1,") and p,
        "config.json", "invalid JSON",
    ),
    "NaN in JSON": (
        lambda p: (p / "config.json").write_text('{"format_version": NaN}') and p,
        "config.json", "NaN is not JSON",
    ),
    "nested too deeply": (
        lambda p: (p / "config.json").write_text("[" * 100_000) and p,
        "config.json", "nested too deeply",
    ),
    # Sizes that drive allocation or loops are bounded before anything is built.
    "depth of a billion": (
        lambda p: edit_config(p, lambda c: c.update(depth=10**9)), "config.json",
        "depth: expected an integer in [1, 1024], got 1000000000",
    ),
    "looped depth of a billion": (
        lambda p: edit_config(p, lambda c: c.update(depth=10**9, looped=True)), "config.json",
        "depth: expected an integer in [1, 1024]",
    ),
    "depth beyond the tensors": (
        lambda p: edit_config(p, lambda c: c.update(depth=K + 1)), "config.json",
        "tensors lists blocks 0 to 2, but a stack of depth 4 holds blocks.0 to blocks.3",
    ),
    "looped with several blocks": (
        lambda p: edit_config(p, lambda c: c.update(looped=True)), "config.json",
        "tensors lists blocks 0 to 2, but a looped stack holds blocks.0 only",
    ),
    "huge dim": (
        lambda p: edit_config(p, lambda c: c["codec"].update(dim=10**6)), "config.json",
        "codec.dim: expected an integer in [1, 1024], got 1000000",
    ),
    "huge width": (
        lambda p: edit_config(p, lambda c: c["block"].update(width=10**12)), "config.json",
        "block.width: expected an integer in [1, 65536]",
    ),
    "negative heads": (
        lambda p: edit_config(p, lambda c: c["block"].update(heads=-2)), "config.json",
        "block.heads: expected an integer in [1, 65536], got -2",
    ),
    "huge mlp_ratio": (
        lambda p: edit_config(p, lambda c: c["block"].update(mlp_ratio=1e300)),
        "config.json", "block.mlp_ratio: expected a number in [0, 64], got 1e+300",
    ),
    "huge count setting": (
        lambda p: edit_config(p, lambda c: c["codec"]["teacher_settings"].update(popsize=10**9)),
        "config.json", "codec.teacher_settings.popsize: expected an integer in [0, 4096]",
    ),
    "huge num_tokens": (
        lambda p: edit_config(p, lambda c: c["codec"].update(num_tokens=2**40)), "config.json",
        "codec.num_tokens: expected an integer in [1, 65536]",
    ),
    "recipe unlike the codec": (
        lambda p: edit_config(p, lambda c: c["recipe"]["problem"].update(dim=100_000)),
        "config.json", "recipe.problem.dim is 100000, but the codec field says 2",
    ),
    "many tensors": (
        lambda p: edit_config(p, lambda c: c["tensors"].update(
            {f"x{i}": [i] for i in range(200_000)})),
        "config.json", "unexpected x9 [9]; and 199990 more",
    ),
    "not a shape": (
        lambda p: edit_config(p, lambda c: c["tensors"].update({"readio.read_in.weight": 3})),
        "config.json", "tensors.readio.read_in.weight: expected a shape",
    ),
    # What sits at a file's name is checked before it is read.
    "config is /dev/zero": (
        lambda p: link(p / "config.json", "/dev/zero"), "config.json",
        "expected a regular file, found a character device",
    ),
    "config is a FIFO": (
        lambda p: fifo(p / "config.json"), "config.json", "expected a regular file, found a FIFO",
    ),
    "config is a directory": (
        lambda p: directory(p / "config.json"), "config.json",
        "expected a regular file, found a directory",
    ),
    "config is huge": (
        lambda p: sparse(p / "config.json", 17 * 2**20), "config.json", "larger than 16 MiB",
    ),
    "config links to nothing": (
        lambda p: link(p / "config.json", p / "gone"), "config.json", "no such file",
    ),
    "weights are /dev/zero": (
        lambda p: link(p / "model.safetensors", "/dev/zero"), "model.safetensors",
        "expected a regular file, found a character device",
    ),
    "weights are a FIFO": (
        lambda p: fifo(p / "model.safetensors"), "model.safetensors",
        "expected a regular file, found a FIFO",
    ),
    "weights are a directory": (
        lambda p: directory(p / "model.safetensors"), "model.safetensors",
        "expected a regular file, found a directory",
    ),
    "weights header lies": (
        lambda p: lying_header(p, 2**40), "model.safetensors",
        "its header declares 1099511627776 bytes",
    ),
    "weights shorter than a header": (
        lambda p: (p / "model.safetensors").write_bytes(b"\1\2") and p, "model.safetensors",
        "shorter than its 8-byte header length",
    ),
    "weights a tensor past the end": (
        lambda p: lying_header(p, None), "model.safetensors", "truncated or corrupt",
    ),
    # What a user may pass instead of a checkpoint directory.
    "a plain file": (
        lambda p: (p.parent / "notes.txt").write_text("hi") and p.parent / "notes.txt",
        "notes.txt", "not a directory: a checkpoint is a directory holding config.json",
    ),
    "the config.json path": (
        lambda p: p / "config.json", "config.json", "pass its directory, ",
    ),
    "an existing .pt file": (
        lambda p: sibling(p, "model.pt"), "model.pt", "refusing to load a .pt file",
    ),
}


# Found by rebuilding the stack, which read_config does not do.
REBUILT = {"tensors unlike the block", "codec unlike its token_dim", "many tensors"}


def link(file: Path, target) -> Path:
    file.unlink()
    file.symlink_to(target)
    return file.parent


def fifo(file: Path) -> Path:
    file.unlink()
    os.mkfifo(file)
    return file.parent


def directory(file: Path) -> Path:
    file.unlink()
    file.mkdir()
    (file / "inside").write_text("{}")
    return file.parent


def sparse(file: Path, size: int) -> Path:
    with open(file, "r+b") as f:
        f.truncate(size)
    return file.parent


def lying_header(path: Path, length: int | None) -> Path:
    """model.safetensors whose header declares `length` bytes, or (None) whose first tensor's
    offsets point past the end of the file."""
    file = path / "model.safetensors"
    data = file.read_bytes()
    size = int.from_bytes(data[:8], "little")
    if length is not None:
        file.write_bytes(length.to_bytes(8, "little") + data[8:])
        return path
    header = json.loads(data[8 : 8 + size])
    name = next(n for n in header if n != "__metadata__")
    header[name]["data_offsets"][1] += 10**9
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])
    return path


@contextlib.contextmanager
def deadline(seconds: int):
    """A TimeoutError instead of a hang (SIGALRM interrupts even a blocking open of a FIFO)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("read", [load_stack, read_config], ids=["load_stack", "read_config"])
def test_each_bad_checkpoint_gets_a_named_error(saved, case, read):
    breaks, file, words = BAD[case]
    if read is read_config and (file == "model.safetensors" or case in REBUILT):
        pytest.skip("read_config neither reads the weights nor rebuilds the stack")
    path = breaks(saved)
    with deadline(20), pytest.raises(CheckpointError) as err:
        read(path)
    assert Path(err.value.file).name == file
    assert words in err.value.message
    assert str(err.value).startswith(err.value.file)
    assert len(str(err.value)) < 2000  # never a hostile value in full


def test_a_checkpoint_at_the_depth_bound_loads(recipe, problem, tmp_path):
    """The bound refuses nothing a real stack needs: a looped stack at MAX_DEPTH loads."""
    stack = make_stack(recipe, problem, looped=True)
    stack.depth = saveload_config.MAX_DEPTH
    path = save_stack(stack, recipe, tmp_path / "ckpt", stage="looped")
    assert load_stack(path).depth == saveload_config.MAX_DEPTH


def test_looped_stack_layers_share_one_block(recipe, problem):
    stack = make_stack(recipe, problem, looped=True)
    assert stack.block(1) is stack.block(K) is stack.block(K + 5)
    assert len(outputs(stack, problem)) == K
    unlooped = make_stack(recipe, problem)
    with pytest.raises(IndexError, match="no layer 4"):
        unlooped.block(K + 1)
    with pytest.raises(ValueError, match="one block and a depth"):
        Stack(stack.codec, stack.readio, list(unlooped.blocks), looped=True, depth=K)


def test_a_checkpoint_saved_before_a_setting_existed_reads_as_what_it_computed(saved):
    assert read_config(saved)["recipe"]["finetune"]["objective"] == "log_normalized"
    edit_config(saved, lambda c: c["recipe"]["finetune"].pop("objective"))
    assert read_config(saved)["recipe"]["finetune"]["objective"] == "frame_mse"
    load_stack(saved)
