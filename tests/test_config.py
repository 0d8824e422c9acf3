"""Recipes: defaults, round trips, every kind of bad input, the `recipe` command, the docs."""

from __future__ import annotations

import dataclasses
import pickle
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
)

RECIPES = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))

FULL = """
name: full
seed: 7
steps: 3
out: elsewhere/full
problem: {family: rosenbrock, dim: 3, settings: {shift: 0.5}, x0_radius: 1.5}
teacher: {name: adam, settings: {lr: 0.01, betas: [0.8, 0.99]}}
codec: {mode: oracle, frame: false}
block: {width: 48, heads: 3, mlp_ratio: 0, norm: post, attention: linear, dropout: 0.1}
pairing: greedy
data: {train_problems: 100, val_problems: 10, test_problems: 20, train_seed: 5, val_seed: 6,
       test_seed: 7, cache_dir: cache}
train: {max_epochs: 2, batch_size: 8, lr: 1e-2, weight_decay: 0.01, warmup_steps: 3,
        schedule: constant, grad_clip: 0, loss_weights: {x: 2, f: 0.5}, accelerator: cpu,
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
        ("steps: 2.5", [], "steps", "expected an int >= 1, got 2.5"),
        ("steps: true", [], "steps", "expected an int >= 1, got true"),
        ("block: {dropout: yes}", [], "block.dropout", "expected a number in [0, 1)"),
        ("block: {norm: layer}", [], "block.norm", 'one of "pre", "post", "none"'),
        ("block: 3", [], "block", "expected a mapping"),
        ("train: {loss_weights: {simplex: -1}}", [], "train.loss_weights", ">= 0"),
        ("steps: 0", [], "steps", "expected an int >= 1, got 0"),
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
        ("train: {loss_weights: {simplx: 1}}", [], "train.loss_weights", "state has simplex"),
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
