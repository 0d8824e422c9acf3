"""Recipes: defaults, round trips, every kind of bad input, the `recipe` command, the docs."""

from __future__ import annotations

import dataclasses
import json
import pickle
import time
import typing
from pathlib import Path

import pytest
import yaml

from blockwise.cli import main
from blockwise.config import (
    Recipe,
    RecipeError,
    describe_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    save_recipe,
    saved_recipe,
)
from blockwise.config import load as recipe_load

RECIPES = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))

FULL = """
name: full
seed: 7
steps: 3
out: elsewhere/full
problem: {family: rosenbrock, dim: 3, settings: {shift: 0.5}, x0_radius: 1.5}
teacher: {name: adam, settings: {lr: 0.01, betas: [0.8, 0.99]}}
codec: {mode: oracle, frame: none}
block: {width: 48, heads: 3, mlp_ratio: 0, norm: post, attention: linear, dropout: 0.1}
pairing: greedy
data: {train_problems: 100, val_problems: 10, test_problems: 20, train_seed: 5, val_seed: 6,
       test_seed: 7, cache_dir: cache}
train: {max_epochs: 2, batch_size: 8, lr: 1e-2, weight_decay: 0.01, warmup_steps: 3,
        schedule: constant, grad_clip: 0, loss_weights: {x: 2}, accelerator: cpu,
        devices: 2, strategy: ddp, precision: 64-true, deterministic: true, workers: 2,
        log_every_n_steps: 1}
finetune: {max_epochs: 0}
eval: {threshold: 0.5}
"""


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _key_paths(cls: type = Recipe, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    paths = []
    for field in dataclasses.fields(cls):
        path = prefix + field.name
        paths.append(path)
        if dataclasses.is_dataclass(hints[field.name]):
            paths += _key_paths(hints[field.name], path + ".")
    return paths


def test_defaults_are_valid_and_resolved():
    recipe = recipe_from_dict({})
    assert recipe.out == "runs/recipe"
    assert recipe.problem.settings == {"condition": 10.0, "rotate": True, "shift": 1.0}
    assert recipe.teacher.settings == {"adaptive": False, "xatol": None, "fatol": None}
    assert recipe.finetune.max_epochs == 5 and recipe.train.max_epochs == 10
    # Every field has exactly one doc string.
    for cls in (Recipe, *(type(getattr(Recipe(), f.name)) for f in dataclasses.fields(Recipe))):
        if dataclasses.is_dataclass(cls):
            assert all(f.metadata["doc"] for f in dataclasses.fields(cls)), cls


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem and recipe.out == f"runs/{path.stem}"


def test_a_full_recipe_round_trips(tmp_path):
    recipe = load_recipe(_write(tmp_path, FULL))
    assert recipe.train.lr == 0.01 and isinstance(recipe.block.mlp_ratio, float)  # 1e-2, 0
    assert recipe.teacher.settings == {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-8}
    assert recipe.finetune == dataclasses.replace(Recipe().finetune, max_epochs=0)
    save_recipe(recipe, tmp_path / "resolved.yaml")
    again = load_recipe(tmp_path / "resolved.yaml")
    assert again == recipe
    assert recipe_to_dict(again) == recipe_to_dict(recipe)
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["out"] == "elsewhere/full"


def test_name_and_out_follow_the_file_and_overrides(tmp_path):
    path = _write(tmp_path, "steps: 2\n", "my_run.yaml")
    assert load_recipe(path).out == "runs/my_run"
    recipe = load_recipe(path, ["name=other", "problem.settings.condition=100", "out=x/y"])
    assert (recipe.name, recipe.out) == ("other", "x/y")
    assert recipe.problem.settings["condition"] == 100


@pytest.mark.parametrize(
    "text, overrides, key_path, words",
    [
        ("stepz: 3", [], "stepz", "did you mean 'steps'"),
        ("block: {widht: 8}", [], "block.widht", "did you mean 'width'"),
        ("steps: 2.5", [], "steps", "expected an int >= 1 and <= 10000, got 2.5"),
        ("steps: true", [], "steps", "expected an int >= 1 and <= 10000, got true"),
        ("block: {dropout: yes}", [], "block.dropout", "expected a number in [0, 1)"),
        ("block: {norm: layer}", [], "block.norm", 'one of "pre", "post", "none"'),
        ("block: 3", [], "block", "expected a mapping"),
        ("train: {loss_weights: {simplex: -1}}", [], "train.loss_weights", ">= 0"),
        ("steps: 0", [], "steps", "expected an int >= 1 and <= 10000, got 0"),
        ("train: {lr: -1}", [], "train.lr", "expected a number > 0, got -1"),
        ("block: {width: 64, heads: 5}", [], "block.heads", "divisor of block.width = 64"),
        ("data: {val_seed: 0}", [], "data.val_seed", "other than data.train_seed = 0"),
        ("problem: {family: rosenbrok}", [], "problem.family", "naming one of"),
        ("problem: {family: rosenbrock, dim: 1}", [], "problem.dim", "int >= 2"),
        ("teacher: {name: nelder}", [], "teacher.name", "naming one of"),
        ("teacher: {settings: {adaptive: 1}}", [], "teacher.settings", "adaptive must be a bool"),
        ("teacher: {settings: {foo: 1}}", [], "teacher.settings", "unknown setting"),
        (
            "teacher: {name: parallel_nelder_mead, settings: {parallelism: 3}}",
            [], "teacher.settings", "parallelism must be <= n = 2",
        ),
        ("problem: {settings: {condition: 0.5}}", [], "problem.settings", "condition must be"),
        ("problem: {settings: {cond: 5}}", [], "problem.settings", "unknown setting"),
        ("train: {loss_weights: {simplx: 1}}", [], "train.loss_weights", "learns simplex, fvals"),
        ("steps: 3", ["steps"], "--set steps", "expected KEY.PATH=VALUE"),
        ("steps: 3", ["train..lr=1"], "--set train..lr=1", "expected KEY.PATH=VALUE"),
        ("steps: 3", ["steps=[1"], "steps", "not valid YAML"),
        ("steps: 3", ["steps.x=1"], "steps", "not a section (from --set steps.x=1)"),
        ("steps: 3", ["train.lrr=1"], "train.lrr", "did you mean 'lr'? (from --set train.lrr=1)"),
        ("steps: 3", ["train.lr=0"], "train.lr", "> 0, got 0 (from --set train.lr=0)"),
        ("steps: 3", ["data.test_seed=1"], "data.test_seed", "(from --set data.test_seed=1)"),
        ("- steps: 3", [], "", "expected a mapping of recipe keys, got [{"),
        ("", [], "", "expected a mapping of recipe keys, got null"),
        ("steps: [1", [], "", "not valid YAML"),
    ],
)
def test_bad_input_names_file_key_path_and_expectation(tmp_path, text, overrides, key_path, words):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    err = info.value
    assert (err.file, err.key_path) == (str(path), key_path)
    assert words in err.message
    assert str(err).startswith(f"{path}: {key_path}: " if key_path else f"{path}: ")


def test_a_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="nope.yaml: no such file"):
        load_recipe(tmp_path / "nope.yaml")


def test_the_recipe_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = _write(tmp_path, "steps: 2\nout: should_not_exist\nblock: {heads: 5}\n")
    before = sorted(tmp_path.rglob("*"))
    assert main(["recipe", str(bad)]) == 2
    assert main(["recipe", str(bad), "--set", "block.heads=4", "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: block.heads: expected a divisor" in err
    assert f"{bad}: train.lr: expected a number > 0, got -1 (from --set train.lr=-1)" in err
    assert sorted(tmp_path.rglob("*")) == before  # no output directory, no cache, nothing

    assert main(["recipe", str(bad), "--set", "block.heads=4"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["block"]["heads"] == 4 and resolved["out"] == "should_not_exist"
    assert sorted(tmp_path.rglob("*")) == before

    assert main(["recipe"]) == 0
    assert capsys.readouterr().out == describe_recipe()


def test_the_docs_mention_every_field():
    text = describe_recipe()
    for path in _key_paths():
        assert f"  {path}: " in text or f"\n{path}: " in text, path
    assert "0 means no MLP" in text and "float64" in text


def test_a_recipe_error_pickles():  # so that a worker process can report one
    err = pickle.loads(pickle.dumps(RecipeError("r.yaml", "train.lr", "expected a number")))
    assert (err.file, err.key_path, err.message) == ("r.yaml", "train.lr", "expected a number")
    assert str(err) == "r.yaml: train.lr: expected a number"


# ---------------------------------------------------------------- issue 10: hostile recipes


def _refused(path: Path, overrides=(), seconds: float = 2.0) -> RecipeError:
    """The RecipeError loading `path` raises, checked to come quickly (in this process's CPU
    time, which other jobs on the machine do not inflate) and to read in one line."""
    start = time.process_time()
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    assert time.process_time() - start < seconds
    assert len(str(info.value)) < 400 + len(str(path)), str(info.value)[:1000]
    return info.value


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "a\\b", "a\x00b", "-rf", ".hidden", "x" * 101, "", "a b", "é"]
)
def test_run_names_are_path_safe(name):
    with pytest.raises(RecipeError, match="letters, digits") as info:
        recipe_from_dict({"name": name})
    assert info.value.key_path == "name"


def test_a_name_from_set_cannot_leave_runs(tmp_path):
    err = _refused(_write(tmp_path, "steps: 2\n"), ["name=.."])
    assert err.key_path == "name" and "(from --set name=..)" in err.message


def test_a_file_name_that_is_no_run_name_asks_for_a_name(tmp_path):
    err = _refused(_write(tmp_path, "steps: 2\n", "my run.yaml"))
    assert err.key_path == "name"
    assert err.message.endswith("(the file's name; give the recipe a name: key)")
    assert load_recipe(_write(tmp_path, "name: my_run\n", "my run.yaml")).name == "my_run"


@pytest.mark.parametrize("name", ["quickstart", "run_1.v2", "A+B-c", "9" + "x" * 99])
def test_ordinary_run_names_pass(name):
    assert recipe_from_dict({"name": name}).out == f"runs/{name}"


def _bomb(levels: int) -> str:
    """A YAML flow mapping whose last alias expands to 9^levels strings."""
    lines = ["{l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f", l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "".join(lines) + "}"


@pytest.mark.parametrize("levels", [6, 9])
@pytest.mark.parametrize("where", ["steps", "problem.settings", "train.loss_weights"])
def test_an_alias_bomb_is_refused_quickly(tmp_path, levels, where):
    section, _, key = where.rpartition(".")
    text = f"{key}: {_bomb(levels)}"
    err = _refused(_write(tmp_path, f"{section}: {{{text}}}" if section else text))
    assert "aliases expanded" in err.message
    err = _refused(_write(tmp_path, "steps: 2\n"), [f"{where}={_bomb(levels)}"])
    assert err.key_path == where and "aliases expanded" in err.message


def test_a_self_referring_alias_is_refused(tmp_path):
    err = _refused(_write(tmp_path, "problem: {settings: &s {condition: [*s]}}"))
    assert err.key_path == "problem"


def test_a_small_anchor_still_works(tmp_path):
    text = "train: &opt {lr: 1e-2, warmup_steps: 3}\nfinetune: *opt\n"
    recipe = load_recipe(_write(tmp_path, text))
    assert recipe.finetune.lr == recipe.train.lr == 0.01 and recipe.finetune.warmup_steps == 3


def test_a_deeply_nested_value_is_refused(tmp_path):
    # PyYAML's scanner is quadratic in flow nesting until its parser runs out of stack.
    text = "[" * 5000
    err = _refused(_write(tmp_path, "steps: 2\n"), ["problem.settings.a=" + text], seconds=5.0)
    assert err.key_path == "problem.settings.a"


@pytest.mark.parametrize("value", ['"' + "z" * 100_000 + '"', "[" + "1, " * 5000 + "1]"])
def test_messages_never_print_a_long_value_in_full(tmp_path, value):
    err = _refused(_write(tmp_path, f"steps: {value}\n"))
    assert err.message.startswith("expected an int >= 1 and <= 10000, got ")
    assert err.message.endswith("...")


@pytest.mark.parametrize(
    "override, key_path, words",
    [
        ("problem.dim=100000", "problem.dim", "<= 256"),
        ("steps=1000000000", "steps", "<= 10000"),
        ("data.train_problems=1000000000", "data.train_problems", "<= 16777216"),
        ("block.width=1000000000", "block.width", "<= 8192"),
        ("block.heads=100000", "block.heads", "<= 1024"),
        ("block.mlp_ratio=1e9", "block.mlp_ratio", "<= 64"),
    ],
)
def test_sizes_have_upper_bounds(tmp_path, override, key_path, words):
    err = _refused(_write(tmp_path, "steps: 2\n"), [override], seconds=1.0)
    assert err.key_path == key_path and words in err.message


def test_a_rollout_larger_than_memory_is_refused(tmp_path):
    big = ["problem.dim=64", "steps=10000", "data.train_problems=16777216"]
    err = _refused(_write(tmp_path, "steps: 2\n"), big, seconds=5.0)
    assert "memory" in err.message and "steps" in err.message
    assert "data.train_problems" in err.message and "problem.dim" in err.message


def test_the_memory_check_reads_the_machine(monkeypatch):
    # The quickstart's rollout is about 13 MiB: refused on a 1 MiB machine, fine on this one.
    quickstart = RECIPES[-1]
    assert quickstart.stem == "quickstart"
    saved = recipe_to_dict(load_recipe(quickstart))
    monkeypatch.setattr(recipe_load, "physical_memory", lambda: 2**20)
    with pytest.raises(RecipeError, match=r"needs about 1\d MiB .* memory"):
        load_recipe(quickstart)
    # A saved recipe (a run's, a checkpoint's) still reads: loading a stack rolls nothing out.
    assert recipe_to_dict(recipe_from_dict(saved_recipe(saved))) == saved
@pytest.mark.parametrize(
    "override, key_path, words",
    [
        ("steps=1:30", "steps", 'expected an int >= 1 and <= 10000, got "1:30"'),
        ("seed=1:0:0", "seed", 'got "1:0:0"'),
        ("train.lr=1:30.5", "train.lr", 'got "1:30.5"'),
        ("seed=010", "seed", 'got "010"'),
    ],
)
def test_base_60_and_octal_numbers_stay_strings(tmp_path, override, key_path, words):
    err = _refused(_write(tmp_path, "steps: 2\n"), [override])
    assert err.key_path == key_path and words in err.message
    key, _, value = override.partition("=")
    section, _, field = key.rpartition(".")
    text = f"{section}: {{{field}: {value}}}" if section else f"{field}: {value}"
    assert words in _refused(_write(tmp_path, text)).message


def test_ordinary_numbers_still_read_as_numbers(tmp_path):
    text = "seed: 1_000\nsteps: 0x0a\ntrain: {lr: 1e-3, weight_decay: .5, grad_clip: 2.}\n"
    recipe = load_recipe(_write(tmp_path, text))
    assert (recipe.seed, recipe.steps) == (1000, 10)
    assert (recipe.train.lr, recipe.train.weight_decay, recipe.train.grad_clip) == (1e-3, 0.5, 2.0)


@pytest.mark.parametrize(
    "teacher, field, learned",
    [
        ("nelder_mead", "nfev", "simplex, fvals"),
        ("nelder_mead", "done", "simplex, fvals"),
        ("cma_es", "generation", "mean, sigma, C, p_sigma, p_c"),
        ("adam", "step", "x, m, v"),
        ("adam", "f", "x, m, v"),  # f is bookkeeping: evaluated, never learned
    ],
)
def test_loss_weights_name_learned_fields(teacher, field, learned):
    for stage in ("train", "finetune"):
        data = {"teacher": {"name": teacher}, stage: {"loss_weights": {field: 100}}}
        with pytest.raises(RecipeError) as info:
            recipe_from_dict(data)
        assert info.value.key_path == f"{stage}.loss_weights"
        assert f"unknown field(s) {field}" in info.value.message
        assert f"learns {learned}" in info.value.message
    weights = dict.fromkeys(learned.split(", "), 2.0)
    assert recipe_from_dict({"teacher": {"name": teacher}, "train": {"loss_weights": weights}})


def test_finetune_workers_is_refused_and_train_workers_kept(tmp_path):
    err = _refused(_write(tmp_path, "finetune: {workers: 2}\n"))
    assert err.key_path == "finetune.workers" and "one process" in err.message
    assert "train.workers" in err.message
    assert "workers" not in recipe_to_dict(recipe_from_dict({}))["finetune"]
    assert recipe_from_dict({"train": {"workers": 3}}).train.workers == 3


def test_saved_recipes_drop_finetune_workers_1():
    saved = recipe_to_dict(recipe_from_dict({}))
    saved["finetune"]["workers"] = 1
    assert recipe_from_dict(saved_recipe(saved)) == recipe_from_dict({})
    saved["finetune"]["workers"] = 2
    with pytest.raises(RecipeError, match="one process"):
        recipe_from_dict(saved_recipe(saved))


@pytest.mark.parametrize("checkpoint", sorted(Path("checkpoints").glob("*/config.json")),
                         ids=lambda p: p.parent.name)
def test_recipes_saved_before_todays_fields_read_whole(checkpoint):
    # The shipped checkpoints were saved by earlier versions: a field added since then needs
    # its ADDED_LATER entry (the value those runs computed), or a run directory saved then
    # would be refused as a different recipe, and read with a default it never used.
    saved = json.loads(checkpoint.read_text())["recipe"]
    filled = saved_recipe(saved)
    today = recipe_to_dict(recipe_from_dict(filled))
    for section, fields in today.items():
        if isinstance(fields, dict):
            assert set(fields) <= set(filled[section]), section
        else:
            assert section in filled
    assert today == filled


def test_train_and_finetune_share_their_common_fields():
    train, finetune = (
        {f.name: f for f in dataclasses.fields(type(getattr(Recipe(), s)))}
        for s in ("train", "finetune")
    )
    # Pretraining's own: blocks trained in parallel, and its loss on a block's raw output
    # (fine-tuning's default scores decoded states, whose vertices are already re-sorted).
    assert set(train) - set(finetune) == {"workers", "set_loss", "error_scale"}
    # Each stage has objectives of its own (pretraining has one pair, not a stack).
    assert train["objective"] is not finetune["objective"]
    for name in set(train) & set(finetune) - {"objective"}:
        assert train[name] is finetune[name], name  # declared once


@pytest.mark.parametrize(
    "teacher, kind",
    [("nelder_mead", "affine"), ("parallel_nelder_mead", "affine"), ("cma_es", "affine"),
     ("adam", "scale")],
)
def test_the_auto_frame_resolves_to_the_best_kind_the_codec_has(teacher, kind):
    recipe = recipe_from_dict({"teacher": {"name": teacher}})
    assert recipe.codec.frame == kind
    # Resolved recipes (saved runs, checkpoints) name the kind, and read back as it.
    assert recipe_from_dict(recipe_to_dict(recipe)).codec.frame == kind


def test_balance_layers_is_refused_with_the_optimize_objective():
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"finetune": {"objective": "optimize", "balance_layers": True}})
    assert info.value.key_path == "finetune.balance_layers"
