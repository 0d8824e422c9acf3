"""blockwise.files: atomic writes that respect the umask and clean up after killed writers."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from blockwise.files import left_aside, replace_dir, umask, write_atomic

ROOT = Path(__file__).parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def with_umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_umask_is_read_without_changing_it(with_umask):
    assert umask() == with_umask
    assert umask() == with_umask


def test_written_files_and_directories_follow_the_umask(with_umask, tmp_path):
    file = write_atomic(tmp_path / "a.txt", "text")
    write_atomic(tmp_path / "b.bin", b"\0")
    write_atomic(tmp_path / "c.txt", lambda p: p.write_text("by a function"))
    replace_dir(tmp_path / "ckpt", lambda d: (d / "config.json").write_text("{}"))
    files = 0o666 & ~with_umask
    assert [mode(tmp_path / n) for n in ("a.txt", "b.bin", "c.txt")] == [files] * 3
    assert mode(tmp_path / "ckpt") == 0o777 & ~with_umask
    assert mode(tmp_path / "ckpt" / "config.json") == files
    assert file.read_text() == "text" and (tmp_path / "c.txt").read_text() == "by a function"


def test_a_saved_checkpoint_follows_the_umask(with_umask, tmp_path):
    from test_checkpoints import make_stack  # noqa: PLC0415 (a test module, not a package)

    from blockwise import problems, save_stack
    from blockwise.config import recipe_from_dict

    recipe = recipe_from_dict({"name": "tiny", "steps": 2, "block": {"width": 32, "heads": 2}})
    problem = problems.make("quadratic", batch=2, dim=2, seed=0)
    path = save_stack(make_stack(recipe, problem), recipe, tmp_path / "ckpt")
    expected = {0o022: (0o755, 0o644), 0o077: (0o700, 0o600)}[with_umask]
    found = (mode(path), {mode(f) for f in path.iterdir()})
    assert found == (expected[0], {expected[1]})


def test_an_exception_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def half(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "out.json", half)
    assert os.listdir(tmp_path) == []
    write_atomic(tmp_path / "out.json", "old")
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "out.json", half)
    assert os.listdir(tmp_path) == ["out.json"] and (tmp_path / "out.json").read_text() == "old"


@pytest.mark.parametrize("name", ["out.json", "run[1]*.json"])
def test_a_dead_writers_temporary_is_removed_and_a_live_ones_kept(tmp_path, name):
    dead, live = dead_pid(), os.getppid()
    stale = tmp_path / f".{name}.tmp-{dead}-0123abcd"
    busy = tmp_path / f".{name}.tmp-{live}-4567cdef"
    impossible = tmp_path / f".{name}.tmp-{10**30}-89abcdef"  # a pid no process can have
    other = tmp_path / f".other.tmp-{dead}-0123abcd"  # another name's: not ours to judge
    for file in (stale, busy, impossible, other):
        file.write_text("partial")
    write_atomic(tmp_path / name, "whole")
    assert sorted(os.listdir(tmp_path)) == sorted([name, busy.name, other.name])


def test_a_dead_writers_directories_are_removed(tmp_path):
    dead = dead_pid()
    new = tmp_path / f".ckpt.new-{dead}-0123abcd"
    old = tmp_path / f".ckpt.old-{dead}-4567cdef"  # killed between its two renames
    for directory in (new, old):
        directory.mkdir()
        (directory / "config.json").write_text("{}")
    assert left_aside(tmp_path / "ckpt") == old
    replace_dir(tmp_path / "ckpt", lambda d: (d / "config.json").write_text("new"))
    assert os.listdir(tmp_path) == ["ckpt"]
    assert left_aside(tmp_path / "ckpt") is None


# Saves a tiny stack to argv[1], announcing (by creating argv[2]) that it is writing the
# weights, then sleeping there until it is killed.
SLOW_SAVE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_checkpoints import make_stack
    from blockwise import problems, save_stack
    from blockwise.checkpoints import saveload
    from blockwise.config import recipe_from_dict

    def slow_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        Path(sys.argv[2]).touch()
        time.sleep(120)

    saveload.save_file = slow_save_file
    recipe = recipe_from_dict({{"name": "tiny", "steps": 2, "block": {{"width": 32, "heads": 2}}}})
    problem = problems.make("quadratic", batch=2, dim=2, seed=0)
    save_stack(make_stack(recipe, problem), recipe, sys.argv[1])
""").format(root=str(ROOT), tests=str(ROOT / "tests"))


def test_a_save_killed_mid_write_is_cleaned_up_by_the_next(tmp_path):
    """Issue 10, defect 12: SIGKILL during the checkpoint write left `.ckpt.new-*` for good."""
    from test_checkpoints import make_stack  # noqa: PLC0415

    from blockwise import load_stack, problems, save_stack
    from blockwise.config import recipe_from_dict

    path, writing = tmp_path / "ckpt", tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path), str(writing)])
    try:
        deadline = time.monotonic() + 120
        while not writing.exists():
            assert child.poll() is None, "the saving process ended before writing"
            assert time.monotonic() < deadline, "the saving process never started writing"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt.new-"))
    assert len(left) == 1 and not path.exists()

    recipe = recipe_from_dict({"name": "tiny", "steps": 2, "block": {"width": 32, "heads": 2}})
    problem = problems.make("quadratic", batch=2, dim=2, seed=0)
    save_stack(make_stack(recipe, problem), recipe, path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "writing"]
    assert load_stack(path).depth == 3  # make_stack builds 3 blocks
