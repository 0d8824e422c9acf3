"""A user's files are never lost or misreported: the run directory's marker, lock and --force,
other spellings of --out, SIGTERM, damaged resume state, OS errors and the file modes.

Each test reproduces a defect found by trying the command line as a hostile user would (issue
10); most use the run directory alone, without training.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from blockwise.cli import main
from blockwise.config import load_recipe, save_recipe
from blockwise.pipeline import run
from blockwise.rundir import MARKER, OutputDirError, claim
from blockwise.training.pretrain import block_path
from blockwise.training.trainer import AtomicCheckpointIO, _resume_from

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TINY = [
    "steps=1",
    "data.train_problems=64",
    "data.val_problems=32",
    "data.test_problems=32",
    "train.max_epochs=1",
    "train.batch_size=32",
    "train.warmup_steps=0",
    "finetune.max_epochs=0",
]


def tiny(tmp_path: Path, out: Path | str, *extra: str):
    recipe = load_recipe(QUICKSTART, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", *extra])
    return dataclasses.replace(recipe, out=str(out))


def sets(tmp_path: Path) -> list[str]:
    return [a for s in [*TINY, f"data.cache_dir={tmp_path / 'cache'}"] for a in ("--set", s)]


def test_force_never_deletes_a_users_folder_that_holds_a_recipe(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "recipe.yaml").write_text(QUICKSTART.read_text())
    (exp / "notes.md").write_text("notes")
    for extra in ([], ["--force"]):
        code = main(["run", str(exp / "recipe.yaml"), *sets(tmp_path), "--out", str(exp), *extra])
        assert code == 2
        assert "not a blockwise run" in capsys.readouterr().err
    assert sorted(p.name for p in exp.iterdir()) == ["notes.md", "recipe.yaml"]
    assert (exp / "recipe.yaml").read_text() == QUICKSTART.read_text()


def test_out_dot_never_empties_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thesis.tex").write_text("years of work")
    assert main(["run", str(QUICKSTART), *sets(tmp_path), "--out", ".", "--force"]) == 2
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / MARKER).exists()


def test_force_replaces_what_blockwise_wrote_and_keeps_the_rest(tmp_path):
    out = tmp_path / "run"
    with claim(tiny(tmp_path, out)):
        pass
    (out / "blocks").mkdir()
    (out / "blocks" / "block_01.safetensors").write_bytes(b"old")
    (out / "metrics.json").write_text("{}")
    (out / "my_notes.md").write_text("mine")
    other = tiny(tmp_path, out, "seed=7")
    with pytest.raises(OutputDirError, match=r"different recipe \(seed differ\)"):
        with claim(other):
            pass
    with claim(other, force=True) as (_, done):
        assert not done
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, ".blockwise.lock", "recipe.yaml", "my_notes.md"]
    )
    assert "seed: 7" in (out / "recipe.yaml").read_text()


def test_another_spelling_of_out_is_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with claim(tiny(tmp_path, "t/base")):
        pass
    for spelling in ("./t/base", "t/base/", str(tmp_path / "t" / "base"), "t/../t/base"):
        with claim(tiny(tmp_path, spelling)) as (out, _):
            assert out == tmp_path / "t" / "base"
    # Moved, and resumed under its new name.
    (tmp_path / "t" / "base").rename(tmp_path / "moved")
    with claim(tiny(tmp_path, "moved")) as (out, _):
        assert out == tmp_path / "moved"


def test_a_second_run_into_the_same_directory_is_refused_while_the_first_runs(tmp_path):
    recipe = tiny(tmp_path, tmp_path / "run")
    with claim(recipe):
        with pytest.raises(OutputDirError, match="in use by another blockwise run"):
            with claim(recipe):
                pass
        # Another process, too: the lock is the operating system's, not this process's.
        code = (
            "import sys; from blockwise.rundir import claim, OutputDirError\n"
            "from blockwise.config import load_recipe\n"
            f"r = load_recipe({str(QUICKSTART)!r}, {TINY!r} + ['data.cache_dir=x'])\n"
            "import dataclasses; r = dataclasses.replace(r, out=sys.argv[1])\n"
            "try:\n    claim(r).__enter__()\nexcept OutputDirError as e:\n    print(e)\n"
        )
        said = subprocess.run(
            [sys.executable, "-c", code, recipe.out], capture_output=True, text=True, cwd=ROOT
        )
        assert "in use by another blockwise run" in said.stdout, said.stderr
    with claim(recipe):  # released with the first
        pass


def test_an_unreadable_saved_recipe_is_reported_not_a_traceback(tmp_path):
    recipe = tiny(tmp_path, tmp_path / "run")
    with claim(recipe):
        pass
    (tmp_path / "run" / "recipe.yaml").write_text("steps: [unclosed\n")
    with pytest.raises(OutputDirError, match=r"recipe.yaml cannot be read .* --force"):
        with claim(recipe):
            pass


def test_out_naming_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="exists and is not a directory"):
        with claim(tiny(tmp_path, tmp_path / "file")):
            pass


def test_sigterm_stops_a_run_with_143_and_the_resume_hint(tmp_path):
    recipe = tiny(tmp_path, tmp_path / "run", "train.max_epochs=400")
    path = tmp_path / "recipe.yaml"
    save_recipe(recipe, path)
    ckpt = Path(recipe.out) / "resume" / "block_01" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockwise", "run", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, said = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, said
    assert "terminated (SIGTERM); run the same command again to resume" in said
    assert not block_path(Path(recipe.out), 1).exists()


def test_resume_state_is_written_in_place_whole(tmp_path, monkeypatch):
    staged = tmp_path / "elsewhere"
    staged.mkdir()
    monkeypatch.setenv("TMPDIR", str(staged))
    path = tmp_path / "resume" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 3, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert list(staged.iterdir()) == [] and os.listdir(path.parent) == ["last.ckpt"]
    assert _resume_from(path) == path


def test_a_truncated_resume_file_is_set_aside_and_the_stage_restarts(tmp_path, capsys):
    recipe = tiny(tmp_path, tmp_path / "run", "train.max_epochs=2")
    path = tmp_path / "resume" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 3, "w": torch.ones(1000)}, path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # what a full disk left
    assert _resume_from(path) is None
    assert "is damaged" in capsys.readouterr().err
    assert path.with_name("last.ckpt.corrupt").read_bytes() == whole[: len(whole) // 2]
    # Through a whole run: block 1's resume file damaged, the run still finishes.
    out = Path(recipe.out)
    with claim(recipe):
        pass
    (out / "resume" / "block_01").mkdir(parents=True)
    (out / "resume" / "block_01" / "last.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
    run(recipe, log=lambda *_: None)
    assert block_path(out, 1).exists()


def test_written_files_respect_the_umask_and_threads_are_given_back(tmp_path):
    old, threads = os.umask(0o022), torch.get_num_threads()
    try:
        recipe = tiny(
            tmp_path, tmp_path / "run", "finetune.max_epochs=1", "finetune.looped=false",
            f"threads={3 - min(threads, 2)}",  # not the caller's count
        )
        run(recipe, log=lambda *_: None)
    finally:
        os.umask(old)
    assert torch.get_num_threads() == threads  # a run leaves the caller's setting as it was
    out = Path(recipe.out)
    for path in [out / "recipe.yaml", out / "metrics.json", block_path(out, 1),
                 out / "checkpoint" / "config.json", out / "plots" / "depth_errors.png"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for path in [out, out / "checkpoint", out / "blocks"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


@pytest.mark.parametrize(
    "err, words",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/ro/run"), "check its permissions"),
        (OSError(errno.ENOSPC, "No space left on device", "/full/x"), "the disk is full"),
        (OSError(errno.EROFS, "Read-only file system", "/ro"), "read-only"),
    ],
)
def test_os_errors_are_one_line_naming_the_path(tmp_path, monkeypatch, capsys, err, words):
    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr("blockwise.pipeline.run", fail)
    assert main(["run", str(QUICKSTART), "--out", str(tmp_path / "x")]) == 1
    said = capsys.readouterr().err.strip()
    assert "\n" not in said and err.filename in said and words in said


def test_a_name_too_long_is_one_line(tmp_path, capsys):
    code = main(["run", str(QUICKSTART), "--out", str(tmp_path / ("x" * 300))])
    assert code == 1
    said = capsys.readouterr().err.strip()
    assert "\n" not in said and "too long" in said


@pytest.mark.parametrize(
    "args, words",
    [
        (["--steps", "0"], "expected 1 to"),
        (["--dim", "0"], "expected 1 to"),
        (["--count", "1000000000"], "expected 1 to"),
        (["--steps", "many"], "expected an integer"),
    ],
)
def test_eval_refuses_sizes_it_would_reinterpret_or_cannot_hold(capsys, args, words):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(ROOT / "checkpoints" / "quickstart"), *args])
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err


def test_eval_refuses_what_would_not_fit_in_memory(capsys):
    code = main(["eval", str(ROOT / "checkpoints" / "quickstart"), "--steps", "100000",
                 "--count", "16000000"])
    assert code == 2
    assert "lower --count or --steps" in capsys.readouterr().err


def test_eval_json_into_a_missing_directory_is_one_line(tmp_path, capsys):
    code = main(["eval", str(ROOT / "checkpoints" / "quickstart"), "--count", "8",
                 "--json", str(tmp_path / "missing" / "m.json")])
    assert code == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["ckpt", "config_dir", "plain"])
def test_eval_of_something_not_a_checkpoint_is_one_line(tmp_path, capsys, make):
    if make == "ckpt":
        path = tmp_path / "last.ckpt"
        path.write_bytes(b"PK\x03\x04 a pickle")
    elif make == "config_dir":
        path = tmp_path / "ckpt"
        (path / "config.json").mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"")
    else:
        path = tmp_path / "notes.txt"
        path.write_text("x")
    assert main(["eval", str(path)]) == 2
    said = capsys.readouterr().err.strip()
    assert "\n" not in said and str(path) in said


def test_a_damaged_rollout_cache_is_set_aside_and_rolled_out_again(tmp_path):
    from blockwise.build import data_splits
    from blockwise.rollout_cache import load_or_roll_out

    split = data_splits(tiny(tmp_path, tmp_path / "run"))["val"]
    _, first = load_or_roll_out(split, tmp_path / "cache")
    (cached,) = (tmp_path / "cache").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable rollout cache"):
        _, again = load_or_roll_out(split, tmp_path / "cache")
    assert torch.equal(first.states["simplex"], again.states["simplex"])
    assert cached.with_name(cached.name + ".corrupt").exists()


def test_threads_change_how_a_run_executes_not_what_it_computes(tmp_path):
    with claim(tiny(tmp_path, tmp_path / "run", "threads=1")):
        pass
    with claim(tiny(tmp_path, tmp_path / "run", "threads=2")) as (_, done):
        assert not done  # resumed, not refused


def test_force_refuses_before_deleting_a_users_file_inside_a_run_directory(tmp_path):
    out = tmp_path / "run"
    with claim(tiny(tmp_path, out)):
        pass
    (out / "plots").mkdir()
    (out / "plots" / "depth_errors.png").write_bytes(b"ours")
    (out / "plots" / "my_figure.svg").write_text("theirs")
    with pytest.raises(OutputDirError, match="plots/my_figure.svg"):
        with claim(tiny(tmp_path, out, "seed=7"), force=True):
            pass
    kept = sorted(p.name for p in (out / "plots").iterdir())
    assert kept == ["depth_errors.png", "my_figure.svg"]
    assert (out / "recipe.yaml").exists()


def test_a_run_without_its_recipe_but_with_output_is_not_resumed(tmp_path):
    # What an interrupted --force leaves: it removes the recipe last, so this is rare, but the
    # blocks of another recipe must never be taken for this one's.
    out = tmp_path / "run"
    with claim(tiny(tmp_path, out)):
        pass
    (out / "blocks").mkdir()
    (out / "recipe.yaml").unlink()
    with pytest.raises(OutputDirError, match=r"holds run output \(blocks\) but no recipe.yaml"):
        with claim(tiny(tmp_path, out)):
            pass


def test_a_cache_that_cannot_be_written_is_said_and_the_run_goes_on(tmp_path):
    from blockwise.build import data_splits
    from blockwise.rollout_cache import load_or_roll_out

    (tmp_path / "cache").write_text("a file where the cache directory should be")
    split = data_splits(tiny(tmp_path, tmp_path / "run"))["val"]
    with pytest.warns(UserWarning, match="rollout cache not written"):
        _, traj = load_or_roll_out(split, tmp_path / "cache")
    assert traj.states["simplex"].shape[1] == 32
