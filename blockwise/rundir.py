"""The run directory: made, claimed, checked and, with --force, cleared of what blockwise wrote.

A directory is a blockwise run only if it holds the marker file `.blockwise-run`, which only
blockwise writes: a directory that merely holds a `recipe.yaml` (a user's experiment folder,
the working directory) is never taken for one. `--force` replaces a run of another recipe by
removing the entries blockwise writes (`WRITTEN`) and nothing else, so a user's notes kept in a
run directory survive it.

One process at a time works in a run directory: `claim` holds an exclusive lock on
`.blockwise.lock` for as long as the run lasts, and a second run into the same directory is
refused at once with a message (the lock goes with the process, so a killed run never leaves
the directory locked). `held` is that marker and lock for any directory of blockwise's (a
sweep's, with its own marker).

Runs are compared by what they compute: the recipe without the output path (a run may be
resumed under another spelling of its directory, or after the directory moved) and without the
settings that only change how it executes (workers, accelerator, devices, ...).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml

from blockwise.config import Recipe, RecipeError, dump_recipe, recipe_to_dict, saved_recipe
from blockwise.files import write_atomic

MARKER = ".blockwise-run"
LOCK = ".blockwise.lock"
RECIPE = "recipe.yaml"
# Every entry of a run directory that blockwise writes; `--force` removes these alone.
WRITTEN = (
    MARKER, LOCK, RECIPE, "metrics.json", "blocks", "resume", "logs", "plots",
    "checkpoint", "finetuned", "looped", "pretrain_errors.png", "pretrain_errors.pdf",
)

# Fields that change how a run executes, not what it computes: a run may resume under others.
EXECUTION_ONLY = {
    "": ("out", "threads"),
    "train": ("workers", "accelerator", "devices", "strategy", "log_every_n_steps"),
    "finetune": ("accelerator", "devices", "strategy", "log_every_n_steps"),
    "data": ("cache_dir",),
}


class OutputDirError(Exception):
    """The output directory cannot be used as asked (it holds another run, or is in use)."""


def is_run(out: Path) -> bool:
    return (out / MARKER).is_file()


def finished(out: Path) -> bool:
    """A run is finished when its last output, the plots, stands beside metrics.json."""
    return (out / "metrics.json").exists() and (out / "plots" / "depth_errors.png").exists()


@contextlib.contextmanager
def claim(recipe: Recipe, force: bool = False) -> Iterator[tuple[Path, bool]]:
    """The run directory of `recipe`, made or checked, locked for the duration: (path,
    finished).

    An existing run of this recipe (up to `EXECUTION_ONLY`) is resumed; a run of another
    recipe is replaced only with `force`; a directory that is not a run is never touched.
    """
    out = Path(recipe.out).expanduser().resolve()
    with held(out, MARKER, "run"):
        yield out, _check(out, recipe, force)


@contextlib.contextmanager
def held(out: Path, marker: str, what: str) -> Iterator[None]:
    """The directory `out` made or checked as blockwise's own `what` ("run", "sweep"), marked
    with the file `marker` and locked (`LOCK`) for the duration.

    A path that is not a directory, or a directory that holds files but no `marker`, is
    refused untouched: only blockwise writes the marker, so a user's folder is never taken
    for one of its directories.
    """
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} exists and is not a directory; choose another --out")
    if out.exists() and any(out.iterdir()) and not (out / marker).is_file():
        raise OutputDirError(
            f"{out} holds files and is not a blockwise {what} (it has no {marker} marker); "
            "choose another --out (blockwise never writes into or deletes such a directory)"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / marker, json.dumps({f"blockwise_{what}": 1}) + "\n")
    with _locked(out / LOCK, what):
        yield


def _check(out: Path, recipe: Recipe, force: bool) -> bool:
    """Whether the run in `out` is finished, after checking what it holds against `recipe`
    (or, with `force`, clearing it); the recipe is saved there either way."""
    saved = out / RECIPE
    if not saved.exists() and not force and _outputs(out):
        # An interrupted --force removes the recipe last, so this is no run we can resume.
        raise OutputDirError(
            f"{out} holds run output ({', '.join(_outputs(out))}) but no {RECIPE}; pass --force "
            "to replace it, or --out DIR"
        )
    if saved.exists() and not force:
        differ = _differing(
            _what_it_computes(_read_saved(saved)), _what_it_computes(recipe_to_dict(recipe))
        )
        if differ:
            raise OutputDirError(
                f"{out} holds a run of a different recipe ({', '.join(differ)} differ); pass "
                "--force to replace it (this deletes the files blockwise wrote there), or "
                "--out DIR"
            )
        write_atomic(saved, dump_recipe(recipe))
        return finished(out)
    if force:
        clear(out)
    write_atomic(saved, dump_recipe(recipe))
    return False


def clear(out: Path) -> None:
    """Remove from the run directory `out` what blockwise wrote there, and nothing else (the
    marker and the lock stay: the directory is still a run, and still ours). A user's file
    inside a directory blockwise writes stops it before anything is removed; the recipe goes
    last, so an interrupted clear still says whose run the rest was."""
    foreign = _foreign(out)
    if foreign:
        raise OutputDirError(
            f"{out} holds files blockwise did not write ({', '.join(foreign[:5])}); move them "
            "out of the run directory before --force, or use --out DIR"
        )
    for name in sorted(WRITTEN, key=lambda n: n == RECIPE):
        if name in (MARKER, LOCK):
            continue
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# What blockwise writes inside its directories, where the names are known in advance.
OWN = {
    "plots": re.compile(r"(objective|trajectories|depth_errors)\.(png|pdf)"),
    "blocks": re.compile(r"(block|shuffled)_\d+\.safetensors"),
    **{
        d: re.compile(r"config\.json|model\.safetensors")
        for d in ("checkpoint", "finetuned", "looped")
    },
}


def _foreign(out: Path) -> list[str]:
    """Files in the run's own directories that blockwise did not write (hidden temp files of
    its atomic writes aside)."""
    return [
        f"{name}/{p.name}"
        for name, own in OWN.items()
        if (out / name).is_dir() and not (out / name).is_symlink()
        for p in sorted((out / name).iterdir())
        if not (own.fullmatch(p.name) or p.name.startswith("."))
    ]


def _outputs(out: Path) -> list[str]:
    return [n for n in WRITTEN if n not in (MARKER, LOCK, RECIPE) and (out / n).exists()]


def _read_saved(saved: Path) -> dict:
    """The recipe a run saved, as a mapping; an unreadable one is an OutputDirError."""
    try:
        data = saved_recipe(yaml.safe_load(saved.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecipeError) as err:
        why = str(err).splitlines()[0][:200]
        raise OutputDirError(
            f"{saved} cannot be read ({why}); pass --force to replace this run, or --out DIR"
        ) from None
    if not isinstance(data, dict):
        raise OutputDirError(
            f"{saved} does not hold a recipe; pass --force to replace this run, or --out DIR"
        )
    return data


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks through fcntl; runs are not guarded
        yield
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(
                f"{path.parent} is in use by another blockwise {what}; wait for it to finish, "
                "or choose another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _what_it_computes(recipe: dict) -> dict:
    top = EXECUTION_ONLY[""]
    return {
        section: (
            {k: v for k, v in value.items() if k not in EXECUTION_ONLY.get(section, ())}
            if isinstance(value, dict)
            else value
        )
        for section, value in recipe.items()
        if section not in top
    }


def _differing(a: dict, b: dict, where: str = "") -> list[str]:
    """Key paths whose values differ between two recipe mappings."""
    keys = list(a) + [k for k in b if k not in a]
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing(x, y, f"{where}{k}.")
        elif x != y:
            out.append(where + k)
    return out


__all__ = [
    "MARKER", "WRITTEN", "OutputDirError", "claim", "clear", "finished", "held", "is_run",
]
