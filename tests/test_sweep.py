"""`blockwise sweep` on a tiny recipe: sweep.json against each run's own metrics.json, a second
sweep reusing every run, a changed recipe and a directory that is not a sweep refused
untouched, bad --depths, the summary's spread over seeds and the figure."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from blockwise import pipeline
from blockwise.cli import main
from blockwise.config import load_recipe
from blockwise.plots import save
from blockwise.plots.sweep import plot_sweep
from blockwise.rundir import MARKER as RUN_MARKER
from blockwise.sweep import summarize, sweep

QUICKSTART = Path(__file__).parent.parent / "recipes" / "quickstart.yaml"
TINY = [
    "data.train_problems=256",
    "data.val_problems=32",
    "data.test_problems=64",
    "block.width=16",
    "block.heads=2",
    "train.max_epochs=1",
    "train.batch_size=64",
    "train.warmup_steps=0",
    "finetune.max_epochs=1",
    "finetune.batch_size=64",
]


def tiny(root: Path) -> list[str]:
    """TINY with the rollout cache under `root`, as `--set` arguments."""
    settings = [*TINY, f"data.cache_dir={root / 'cache'}"]
    return [arg for s in settings for arg in ("--set", s)]


def _depth_errors_only(dirs: list) -> list:
    """Stands in for the runs' own figures (seconds each, and none of the sweep's business):
    the one file that says a run is finished."""
    plots = Path(dirs[0]) / "plots"
    plots.mkdir(exist_ok=True)
    (plots / "depth_errors.png").write_bytes(b"")
    return []


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A sweep of depths 1, 2 and seeds 0, 1 through the command line; its directory."""
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "plot_runs", _depth_errors_only)
        code = main([
            "sweep", str(QUICKSTART), "--depths", "2,1", "--seeds", "1,0", "--threads", "1",
            "--out", str(root / "sweep"), *tiny(root),
        ])
    assert code == 0
    return root / "sweep"


def _files(where: Path) -> dict[str, int]:
    """Every file under `where` with its modification time, blockwise's markers and locks
    aside (each claim of a directory rewrites its marker, the same bytes)."""
    return {
        str(p.relative_to(where)): p.stat().st_mtime_ns
        for p in sorted(where.rglob("*"))
        if p.is_file() and p.name not in (".blockwise.lock", ".blockwise-run", ".blockwise-sweep")
    }


def _expected(per_seed: list, censored: bool) -> dict:
    """Median, min and max recomputed: a censored None (never broke down) is later than any
    layer, any other None is left out."""
    if censored:
        ordered = [math.inf if v is None else v for v in per_seed]
        back = {k: f(ordered) for k, f in
                (("median", statistics.median), ("min", min), ("max", max))}
        return {k: None if v == math.inf else v for k, v in back.items()}
    kept = [v for v in per_seed if v is not None]
    if not kept:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept)}


def _check_spread(measure: dict, i: int, values: list, censored: bool) -> None:
    assert measure["per_seed"][i] == values
    for key, value in _expected(values, censored).items():
        if value is None:
            assert measure[key][i] is None, key
        else:
            assert measure[key][i] == pytest.approx(value), key


def test_sweep_json_holds_each_runs_own_numbers(swept):
    summary = json.loads((swept / "sweep.json").read_text(), parse_constant=pytest.fail)
    assert summary["depths"] == [1, 2] and summary["seeds"] == [0, 1]
    assert summary["runs"] == [["K1-seed0", "K1-seed1"], ["K2-seed0", "K2-seed1"]]
    assert summary["left_out"] == {}
    for i, depth in enumerate(summary["depths"]):
        runs = [
            json.loads((swept / path / "metrics.json").read_text())
            for path in summary["runs"][i]
        ]
        for seed, path in zip(summary["seeds"], summary["runs"][i], strict=True):
            saved = (swept / path / "recipe.yaml").read_text()
            assert f"steps: {depth}\n" in saved and f"\nseed: {seed}\n" in saved
            assert f"name: quickstart-K{depth}-seed{seed}\n" in saved
        assert set(summary["evaluations"]) == set(runs[0]["evaluations"])
        assert {"untrained", "stacked", "finetuned"} <= set(summary["evaluations"])
        for name, measures in summary["evaluations"].items():
            evaluations = [m["evaluations"][name] for m in runs]
            primary = evaluations[0]["primary"]
            assert primary == summary["primary"] == "simplex"
            _check_spread(measures["breakdown_depth"], i,
                          [e["breakdown_depth"] for e in evaluations], censored=True)
            _check_spread(measures["last_error"], i,
                          [e["rollout"][primary]["median"][depth - 1] for e in evaluations],
                          censored=False)
            _check_spread(measures["progress"], i,
                          [e["progress_ratio"]["median"][depth - 1] for e in evaluations],
                          censored=False)
        held = [m["evaluations"]["stacked"]["identity_rollout"]["simplex"]["median"]
                for m in runs]
        _check_spread(summary["identity"]["last_error"], i, [h[depth - 1] for h in held],
                      censored=False)
        broke = [next((k + 1 for k, v in enumerate(h) if v > summary["threshold"]), None)
                 for h in held]
        _check_spread(summary["identity"]["breakdown_depth"], i, broke, censored=True)
    for suffix in ("png", "pdf"):
        assert (swept / f"sweep.{suffix}").stat().st_size > 1000


def test_a_second_sweep_reuses_every_run(swept):
    before = _files(swept)
    said = []
    recipe = load_recipe(QUICKSTART, [*TINY, f"data.cache_dir={swept.parent / 'cache'}"])
    summary = sweep(recipe, [1, 2], [0, 1], out=swept, log=said.append)
    assert sum("nothing to do" in line for line in said) == 4
    assert not any("training" in line for line in said)
    after = _files(swept)
    assert after.keys() == before.keys()
    changed = {name for name in after if after[name] != before[name]}
    # Every claim of a run rewrites the run's recipe, the same bytes.
    rewritten = {name for name in changed if Path(name).name == "recipe.yaml"}
    assert changed - rewritten == {"sweep.json", "sweep.png", "sweep.pdf"}
    assert "K2-seed1/blocks/block_02.safetensors" in after
    assert json.loads((swept / "sweep.json").read_text()) == summary


def test_a_changed_recipe_is_refused_without_force(swept, capsys):
    before = _files(swept)
    code = main([
        "sweep", str(QUICKSTART), "--depths", "1,2", "--seeds", "0,1", "--out", str(swept),
        *tiny(swept.parent), "--set", "train.lr=0.005",
    ])
    assert code == 2
    err = capsys.readouterr().err
    assert "blockwise sweep: error:" in err and "different recipe (train.lr differ)" in err
    assert _files(swept) == before


@pytest.mark.parametrize("marker", [None, RUN_MARKER], ids=["user folder", "run directory"])
def test_a_directory_that_is_not_a_sweep_is_refused_untouched(tmp_path, capsys, marker):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    if marker is not None:
        (folder / marker).write_text("{}")
    before = _files(folder)
    code = main(["sweep", str(QUICKSTART), "--depths", "1", "--out", str(folder), *tiny(tmp_path)])
    assert code == 2
    assert "is not a blockwise sweep" in capsys.readouterr().err
    assert _files(folder) == before and (folder / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "depths, says",
    [
        ("0", "expected 1 to 10000, got 0"),
        ("1,x", "expected an integer, got 'x'"),
        ("", "expected an integer, got ''"),
        ("2,1,2", "2 given more than once"),
        ("10001", "expected 1 to 10000, got 10001"),
    ],
)
def test_bad_depths_exit_2_with_one_clear_line(tmp_path, capsys, depths, says):
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stop:
        main(["sweep", str(QUICKSTART), "--depths", depths, "--out", str(out)])
    assert stop.value.code == 2
    assert f"blockwise sweep: error: argument --depths: {says}" in capsys.readouterr().err
    assert not out.exists()


def test_the_python_api_refuses_bad_depths_seeds_and_names_before_writing(tmp_path):
    recipe = load_recipe(QUICKSTART, TINY)
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match="depths: 1 given more than once"):
        sweep(recipe, [1, 1], out=out)
    with pytest.raises(ValueError, match=r"seeds: expected integers 0 to 2\^32 - 1, got -1"):
        sweep(recipe, [1], [-1], out=out)
    long = load_recipe(QUICKSTART, [*TINY, f"name={'q' * 95}"])
    with pytest.raises(ValueError, match="give the recipe a shorter name"):
        sweep(long, [1], out=out)
    assert not out.exists()


def _metrics(depth: int, breakdown: int | None, error: float | None, names=("stacked",)) -> dict:
    """A run's metrics as sweep reads them, with the same numbers at every layer."""
    evaluation = {
        "layers": depth, "primary": "x", "threshold": 1.0, "breakdown_depth": breakdown,
        "rollout": {"x": {"median": [error] * depth}},
        "progress_ratio": {"median": [0.5] * depth},
        "identity_rollout": {"x": {"median": [1.0] + [2.0] * (depth - 1)}},
    }
    return {"evaluations": {n: evaluation for n in names}}


def test_the_spread_keeps_a_stack_that_never_broke_down_apart(tmp_path):
    both = ("stacked", "looped")
    metrics = [
        [_metrics(4, None, 0.1, both), _metrics(4, 3, None, both), _metrics(4, None, 0.3, both)],
        [_metrics(8, 2, 0.2), _metrics(8, 5, 0.4, both), _metrics(8, None, None, both)],
    ]
    runs = [[f"K{k}-seed{s}" for s in range(3)] for k in (4, 8)]
    summary = summarize("toy", [4, 8], [0, 1, 2], runs, metrics)
    depth = summary["evaluations"]["stacked"]["breakdown_depth"]
    assert depth["per_seed"] == [[None, 3, None], [2, 5, None]]
    assert depth["median"] == [None, 5] and depth["min"] == [3, 2] and depth["max"] == [None, None]
    error = summary["evaluations"]["stacked"]["last_error"]
    assert error["median"] == [pytest.approx(0.2), pytest.approx(0.3)]
    assert error["min"] == [0.1, 0.2] and error["max"] == [0.3, 0.4]
    assert summary["left_out"] == {"looped": ["K8-seed0"]}
    assert summary["identity"]["breakdown_depth"]["median"] == [2, 2]
    assert summary["identity"]["last_error"]["median"] == [2.0, 2.0]
    two = summarize("toy", [4], [0, 1], [runs[0][:2]], [metrics[0][:2]])
    assert two["evaluations"]["stacked"]["breakdown_depth"]["median"] == [None]
    paths = save(plot_sweep(summary), tmp_path / "sweep")
    assert all(p.stat().st_size > 1000 for p in paths)
