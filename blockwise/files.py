"""Writing files and directories all or nothing, with the user's umask, and cleaning up after
writers that were killed.

Everything blockwise writes goes through `write_atomic` (a file) or `replace_dir` (a checkpoint
directory): the content is written under a hidden sibling name, flushed to disk, then renamed to
its name. The rename is the commit point, so a crash, a full disk or a SIGKILL never leaves a
partial file at a name that a later run would read. A killed writer leaves its hidden sibling
behind; the next writer of the same name removes it (`_sweep`), since the name carries the pid
of the process that made it and that process is gone.

What is renamed into place has the mode an ordinary `open` or `mkdir` would have given it
(0666 or 0777 less the umask), not the private 0600/0700 of `tempfile`'s files.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, and set it back
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, content: str | bytes | Callable[[Path], None]) -> Path:
    """Make `content` the file at `path`, whole or not at all; return `path`.

    `content` is text (UTF-8), bytes, or a function that writes the file at the path it is
    given (e.g. `lambda p: save_file(tensors, p)`). The parent directory is made if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path, "tmp")
    tmp = path.with_name(_hidden(path.name, "tmp"))
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb") as file:
                file.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(tmp, 0o666 & ~umask())
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def replace_dir(path: str | Path, write: Callable[[Path], None]) -> None:
    """Make what `write(directory)` writes into a fresh directory the contents of `path`.

    The new directory is written and fsynced under a hidden sibling name, then renamed to its
    name. A rename cannot replace a non-empty directory, so an old one is first renamed aside
    (.<name>.old-*) and deleted only after the new one is in place. A crash between the two
    renames leaves nothing at the name and the old directory whole beside it (`left_aside`);
    the next successful replace removes it. The files written get the mode `open` gives under
    the umask, whatever mode the writer gave them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path, "new")
    new = path.with_name(_hidden(path.name, "new"))
    old = path.with_name(_hidden(path.name, "old"))
    new.mkdir(mode=0o777)  # mkdir applies the umask itself
    try:
        write(new)
        files = 0o666 & ~umask()
        for file in new.iterdir():
            # Some writers make their files private (safetensors' save_file: 0600).
            if file.is_file() and not file.is_symlink():
                os.chmod(file, files)
            _fsync(file)
        _fsync(new)
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
    except BaseException:
        # An exception (unlike a crash) lets us put things back as they were.
        if old.exists() and not path.exists():
            os.replace(old, path)
        shutil.rmtree(new, ignore_errors=True)
        raise
    _fsync(path.parent)  # both renames on disk before the only other copy goes
    shutil.rmtree(old, ignore_errors=True)
    # What a writer killed between its two renames set aside is now superseded.
    _sweep(path, "old")


def left_aside(path: str | Path) -> Path | None:
    """The old directory a crash in `replace_dir(path, ...)` left beside `path`, if any."""
    path = Path(path)
    if not path.parent.is_dir():
        return None
    prefix = f".{path.name}.old-"
    aside = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    return max(aside, key=lambda p: p.stat().st_mtime, default=None)


def _hidden(name: str, kind: str) -> str:
    return f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _sweep(path: Path, kind: str) -> None:
    """Remove the hidden `kind` siblings of `path` whose writer process is gone."""
    # Matched by name rather than by glob, since `path.name` may hold glob characters ([, *).
    pattern = re.compile(re.escape(f".{path.name}.{kind}-") + r"(\d+)-[0-9a-f]{8}")
    for stale in path.parent.iterdir():
        match = pattern.fullmatch(stale.name)
        if match and not _alive(int(match[1])):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process, or no such pid at all
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync(path: Path) -> None:
    if path.is_dir() and os.name == "nt":  # Windows cannot open a directory to fsync it
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
