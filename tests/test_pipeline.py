"""`blockwise run` end to end on shrunken recipes: every shipped recipe, resuming, refusing
to clobber, bad input, a diverging loss, greedy pairing and parallel workers."""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from blockwise.build import load_data, new_block
from blockwise.checkpoints import load_stack, read_config
from blockwise.cli import main
from blockwise.config import RecipeError, load_recipe, recipe_to_dict, save_recipe
from blockwise.errors import normalized_error
from blockwise.model import ReadIO
from blockwise.pipeline import run
from blockwise.rundir import MARKER, OutputDirError, claim
from blockwise.stack import Stack
from blockwise.training.finetune import StackModule
from blockwise.training.pretrain import block_path
from blockwise.training.trainer import DivergedTraining

RECIPES = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))
QUICKSTART = RECIPES[0].parent / "quickstart.yaml"
SHRINK = [
    "steps=2",
    "data.train_problems=96",
    "data.val_problems=32",
    "data.test_problems=48",
    "train.max_epochs=1",
    "train.batch_size=32",
    "train.warmup_steps=0",
    "finetune.max_epochs=1",
    "finetune.batch_size=32",
    # The shuffled control doubles pretraining; the tests about it turn it back on.
    "eval.shuffled=false",
]
CONTROL = "eval.shuffled=true"


def shrunk(path: Path, tmp_path: Path, *extra: str):
    recipe = load_recipe(path, [*SHRINK, f"data.cache_dir={tmp_path / 'cache'}", *extra])
    return dataclasses.replace(recipe, out=str(tmp_path / recipe.name))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_runs_shrunk(path, tmp_path):
    recipe = shrunk(path, tmp_path)
    metrics = run(recipe, log=lambda *_: None)
    rows = metrics["pretrain"]["teacher_forced"]
    assert [r["layer"] for r in rows] == [1, 2]
    for row in rows:
        for field, by_label in row["fields"].items():
            identity = by_label["identity"]["median"]
            assert identity == pytest.approx(1.0, abs=1e-9) or identity != identity, field
            assert by_label["trained"]["count"] > 0
    out = Path(recipe.out)
    assert (out / "recipe.yaml").exists() and (out / "metrics.json").exists()
    blocks = (1,) if recipe.tied else (1, 2)
    assert all(block_path(out, k).exists() for k in blocks)
    evaluations = metrics["evaluations"]
    looped = set() if recipe.tied else {"looped"}  # a tied stack is its own looped baseline
    assert set(evaluations) == {"untrained", "stacked", "finetuned"} | looped
    for name, ev in evaluations.items():
        assert ev["layers"] == 2 and ev["problems"] == 48, name
    stack = load_stack(out / "checkpoint")
    assert stack.depth == 2 and stack.looped == recipe.tied
    assert read_config(out / "checkpoint")["metrics"] == evaluations["finetuned"]
    assert recipe.tied or load_stack(out / "looped").looped
    assert (out / "plots" / "depth_errors.png").exists()


def test_training_beats_the_untrained_and_shuffled_blocks_on_the_quickstart(tmp_path):
    recipe = shrunk(
        QUICKSTART,
        tmp_path,
        "steps=1",
        "data.train_problems=512",
        "train.max_epochs=4",
        "train.lr=3e-3",
        CONTROL,
    )
    row = run(recipe, log=lambda *_: None)["pretrain"]["teacher_forced"][0]
    simplex = row["fields"]["simplex"]
    assert simplex["trained"]["median"] < 0.8 * simplex["untrained"]["median"]
    # The control learned the targets' distribution from as many pairs, for as long: only
    # the relation between input and target it could not learn.
    assert simplex["trained"]["median"] < 0.8 * simplex["shuffled"]["median"]


def test_a_tied_recipe_trains_one_block_and_applies_it_at_every_layer(tmp_path):
    recipe = shrunk(QUICKSTART, tmp_path, "steps=3", "pairing=shared", "tied=true",
                    "data.test_problems=49", CONTROL)
    metrics = run(recipe, log=lambda *_: None)
    out = Path(recipe.out)
    assert sorted(p.name for p in (out / "blocks").iterdir()) == [
        "block_01.safetensors", "shuffled_01.safetensors"]
    assert metrics["pretrain"]["teacher_forced"][0]["fields"]["simplex"]["shuffled"]["count"] > 0
    assert set(metrics["evaluations"]) == {"untrained", "shuffled", "stacked", "finetuned"}
    assert not (out / "looped").exists()
    config = read_config(out / "checkpoint")
    assert config["looped"] and config["depth"] == 3
    assert not any(name.startswith("blocks.1.") for name in config["tensors"])
    # The stacked stack, rebuilt by hand: block_01's weights at each of 3 untied layers.
    tuned = load_stack(out / "checkpoint")
    block = load_file(block_path(out, 1))
    by_hand = Stack(tuned.codec, ReadIO(tuned.codec.token_dim, recipe.block.width),
                    [new_block(recipe, 1) for _ in range(3)])
    for b in by_hand.blocks:
        b.load_state_dict(block)
    problem, traj = load_data(recipe)["test"]
    with torch.no_grad():
        states = by_hand(problem, traj[0])
    errors = [torch.nanmedian(normalized_error(s["simplex"], traj[k + 1]["simplex"],
                                               traj[k]["simplex"])).item()
              for k, s in enumerate(states)]
    stacked = metrics["evaluations"]["stacked"]["rollout"]["simplex"]["median"]
    assert errors == pytest.approx(stacked, rel=1e-5)


def test_tied_needs_shared_pairing(tmp_path):
    with pytest.raises(RecipeError, match="tied"):
        shrunk(QUICKSTART, tmp_path, "tied=true")


def test_a_finished_run_is_not_redone_and_another_recipe_is_refused(tmp_path):
    recipe = shrunk(QUICKSTART, tmp_path)
    run(recipe, log=lambda *_: None)
    stamp = block_path(Path(recipe.out), 1).stat().st_mtime_ns
    said = []
    run(recipe, log=said.append)
    assert "nothing to do" in said[0]
    assert block_path(Path(recipe.out), 1).stat().st_mtime_ns == stamp
    other = dataclasses.replace(recipe, seed=7)
    with pytest.raises(OutputDirError, match="different recipe"):
        run(other, log=lambda *_: None)
    run(other, force=True, log=lambda *_: None)
    assert "seed: 7" in (Path(recipe.out) / "recipe.yaml").read_text()


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    recipe = shrunk(QUICKSTART, tmp_path)
    run(recipe, log=lambda *_: None)
    out = Path(recipe.out)
    stamp = block_path(out, 1).stat().st_mtime_ns
    (out / "metrics.json").unlink()
    block_path(out, 2).unlink()
    said = []
    run(recipe, log=said.append)
    assert block_path(out, 1).stat().st_mtime_ns == stamp
    assert any("training block 2" in s for s in said)
    assert not any("training block 1" in s for s in said)


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_mid_training_resumes_to_the_uninterrupted_result(tmp_path):
    recipe = shrunk(QUICKSTART, tmp_path, "steps=1", "train.max_epochs=16")
    out = Path(recipe.out)
    path = tmp_path / "recipe.yaml"
    save_recipe(recipe, path)
    ckpt = out / "resume" / "block_01" / "last.ckpt"
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blockwise", "run", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            # A test runner started in the background may hand its children an ignored SIGINT.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        err.seek(0)
        said = err.read()
    assert proc.returncode == 130, said
    assert "run the same command again to resume" in said
    assert not block_path(out, 1).exists(), "block 1 finished before the interrupt"
    # Lightning's own checkpoint, just written by this test's run: trusted.
    epoch = torch.load(ckpt, weights_only=False)["epoch"]
    assert epoch < 15
    metrics = run(recipe, log=lambda *_: None)
    assert [r["layer"] for r in metrics["pretrain"]["teacher_forced"]] == [1]
    # The resumed fit logs to a second version and starts after the checkpoint's epoch ...
    resumed = out / "logs" / "block_01" / "version_1" / "metrics.csv"
    epochs = [int(row["epoch"]) for row in csv.DictReader(resumed.open())]
    assert min(epochs) == epoch + 1 and max(epochs) == 15
    # ... and ends where an uninterrupted run ends, bit for bit.
    straight = dataclasses.replace(recipe, out=str(tmp_path / "straight"))
    run(straight, log=lambda *_: None)
    assert _same_tensors(
        load_file(block_path(out, 1)), load_file(block_path(Path(straight.out), 1))
    )
    assert not (out / "resume" / "block_01").exists(), "a saved block keeps no resume state"


def test_interrupted_fine_tuning_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    recipe = shrunk(
        QUICKSTART,
        tmp_path,
        "finetune.max_epochs=3",
        "finetune.freeze_blocks_epochs=1",
        "finetune.train_readio=true",
        "finetune.looped=false",
    )
    straight = dataclasses.replace(recipe, out=str(tmp_path / "straight"))
    run(straight, log=lambda *_: None)

    def interrupt_after_epoch_1(module):
        if module.current_epoch == 1:
            raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(StackModule, "on_train_epoch_end", interrupt_after_epoch_1)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(recipe, log=lambda *_: None)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after catching one
    monkeypatch.undo()
    out = Path(recipe.out)
    assert not (out / "finetuned").exists()
    # Lightning's own checkpoint, just written by this test's run: trusted.
    epoch = torch.load(out / "resume" / "finetuned" / "last.ckpt", weights_only=False)["epoch"]
    run(recipe, log=lambda *_: None)
    resumed = out / "logs" / "finetuned" / "version_1" / "metrics.csv"
    # Resumed, not restarted: the second fit begins after the checkpoint's epoch.
    assert min(int(row["epoch"]) for row in csv.DictReader(resumed.open())) == epoch + 1 > 0
    got = load_file(out / "finetuned" / "model.safetensors")
    want = load_file(Path(straight.out) / "finetuned" / "model.safetensors")
    assert _same_tensors(got, want)


def prepare_out(recipe, force=False):
    with claim(recipe, force) as (out, done):
        return out, done


def test_a_run_saved_before_a_setting_existed_resumes_as_what_it_computed(tmp_path):
    recipe = shrunk(QUICKSTART, tmp_path, "finetune.objective=frame_mse")
    out = Path(recipe.out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("{}")
    saved = recipe_to_dict(recipe)
    del saved["finetune"]["objective"]  # as a run saved before the field existed
    (out / "recipe.yaml").write_text(yaml.safe_dump(saved))
    assert prepare_out(recipe) == (out, False)  # it computed frame_mse: the same recipe
    today = dataclasses.replace(
        recipe, finetune=dataclasses.replace(recipe.finetune, objective="log_normalized")
    )
    with pytest.raises(OutputDirError, match=r"different recipe \(finetune.objective differ\)"):
        prepare_out(today)
    # A value the saved recipe states is kept, never replaced by the one for older runs.
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(today)))
    assert prepare_out(today) == (out, False)


def test_bad_recipe_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\ntrain:\n  lr: -1\n")
    code = main(["run", str(bad), "--out", str(tmp_path / "never")])
    assert code == 2
    assert "train.lr" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_a_diverging_loss_stops_with_a_clear_message(tmp_path):
    recipe = shrunk(
        QUICKSTART,
        tmp_path,
        "train.lr=1e12",
        "train.grad_clip=0",
        "train.max_epochs=3",
        "train.schedule=constant",
    )
    with pytest.raises(DivergedTraining, match="block 1: the training loss became"):
        run(recipe, log=lambda *_: None)
    assert not block_path(Path(recipe.out), 1).exists()


def test_greedy_pairing_trains_on_the_frozen_stack(tmp_path):
    recipe = shrunk(QUICKSTART, tmp_path, "pairing=greedy")
    said = []
    metrics = run(recipe, log=said.append)
    assert "greedy pairing" in " ".join(said)
    assert len(metrics["pretrain"]["teacher_forced"]) == 2


def test_workers_train_blocks_in_parallel_processes(tmp_path, capsys):
    recipe = shrunk(QUICKSTART, tmp_path, CONTROL)
    path = tmp_path / "recipe.yaml"
    save_recipe(recipe, path)
    assert main(["run", str(path), "--workers", "2"]) == 0
    # The blocks and their shuffled controls, from one queue.
    said = "training block_01, block_02, shuffled_01, shuffled_02 in 2 processes"
    assert said in capsys.readouterr().out
    out = Path(recipe.out)
    assert "workers: 2" in (out / "recipe.yaml").read_text()
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["pretrain"]["teacher_forced"]) == 2
    assert main(["run", str(path), "--workers", "0"]) == 2
    assert "train.workers" in capsys.readouterr().err


def test_finetuning_with_a_frozen_first_phase_and_last_layer_supervision(tmp_path):
    recipe = shrunk(
        QUICKSTART,
        tmp_path,
        "finetune.max_epochs=2",
        "finetune.freeze_blocks_epochs=1",
        "finetune.train_readio=true",
        "finetune.supervision=last",
        "finetune.looped=false",
    )
    metrics = run(recipe, log=lambda *_: None)
    assert set(metrics["evaluations"]) == {"untrained", "stacked", "finetuned"}
    out = Path(recipe.out)
    tuned = load_stack(out / "finetuned")
    eye = torch.eye(*tuned.readio.read_in.weight.shape)
    assert not torch.equal(tuned.readio.read_in.weight, eye), "read-in did not train"
    pretrained = load_file(block_path(out, 1))
    moved = [
        k for k, v in tuned.blocks[0].state_dict().items() if not torch.equal(v, pretrained[k])
    ]
    assert moved, "the blocks did not train after the frozen phase"


def test_a_directory_that_is_not_a_run_is_never_touched_even_with_force(tmp_path):
    recipe = shrunk(QUICKSTART, tmp_path)
    out = Path(recipe.out)
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(OutputDirError, match="not a blockwise run"):
            run(recipe, force=force, log=lambda *_: None)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_run_resumes_under_other_execution_settings(tmp_path):
    recipe = shrunk(QUICKSTART, tmp_path)
    run(recipe, log=lambda *_: None)
    other = load_recipe(
        QUICKSTART,
        [*SHRINK, f"data.cache_dir={tmp_path / 'cache'}", "train.workers=2"],
    )
    said = []
    run(dataclasses.replace(other, out=recipe.out), log=said.append)
    assert "nothing to do" in said[0]
