"""Replace a directory all or nothing: a crash never leaves a partial one at its name.

The new directory is written and fsynced under a hidden sibling name, then renamed to its
name. That rename is the commit point: nothing is at the name until the directory is
complete, so no "complete" marker file is needed (nor could one be trusted more than the
rename). A rename cannot replace a non-empty directory, so an old one is first renamed aside
(.<name>.old-*) and deleted only after the new one is in place. A crash between the two
renames leaves nothing at the name and the old directory whole beside it (`left_aside`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Make what `write(directory)` writes into a fresh directory the contents of `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    old = new.with_name(new.name.replace(".new-", ".old-", 1))
    try:
        write(new)
        for file in new.iterdir():
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


def left_aside(path: Path) -> Path | None:
    """The old directory a crash in `replace_dir(path, ...)` left beside `path`, if any."""
    aside = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    return aside[-1] if aside else None


def _fsync(path: Path) -> None:
    if path.is_dir() and os.name == "nt":  # Windows cannot open a directory to fsync it
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
