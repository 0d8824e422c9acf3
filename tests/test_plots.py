"""Plots of evaluated stacks: each writes a PNG and a PDF that hold what they promise, reads
metrics.json as strict JSON leaves it (null for NaN, any subset of evaluations), and
`plot_runs` turns run directories into figures or says which directory is not a run."""

from __future__ import annotations

import io
import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # before matplotlib is imported, here or below

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, Polygon

from blockwise.build import build_codec, data_splits, new_block
from blockwise.checkpoints import save_stack
from blockwise.cli import main
from blockwise.config import dump_recipe, recipe_from_dict
from blockwise.evaluation import eval_checkpoint
from blockwise.model import ReadIO
from blockwise.plots import (
    plot_compare,
    plot_depth_errors,
    plot_objective_depth,
    plot_stack_trajectories,
    save,
)
from blockwise.plots.runs import checkpoint_metrics, plot_runs
from blockwise.rollout_cache import load_or_roll_out
from blockwise.stack import Stack

L = 6
FIELDS = ["simplex", "fvals"]


def summary(median, spread: float = 2.0) -> dict:
    median = np.asarray(median, dtype=float)
    return {"median": median.tolist(), "p10": (median / spread).tolist(),
            "p90": (median * spread).tolist()}


def layer_metrics(growth: float, breakdown: int | None) -> dict:
    """A LayerMetrics dict of the issue-4 schema with made-up, plausible numbers."""
    k = np.arange(1, L + 1)
    teacher = 10.0 * 0.5 ** np.arange(L + 1)
    return {
        "layers": L, "problems": 32, "fields": FIELDS, "primary": FIELDS[0], "threshold": 1.0,
        "teacher_forced": {f: summary(0.05 + 0 * k) for f in FIELDS},
        "rollout": {f: summary(0.05 * growth**k) for f in FIELDS},
        "identity_rollout": {f: summary(np.sqrt(k)) for f in FIELDS},
        "objective": {"teacher": summary(teacher), "emulated": summary(teacher * 1.5)},
        "progress_ratio": summary(0.9 + 0 * k, 1.1),
        "breakdown_depth": breakdown,
        "branches": {},
    }


def run_metrics(name: str = "fake", evaluations=("stacked", "finetuned", "untrained", "looped"),
                nulls: bool = False) -> dict:
    made = {"stacked": layer_metrics(2.0, 5), "finetuned": layer_metrics(1.5, None),
            "untrained": layer_metrics(1.2, 1), "looped": layer_metrics(2.5, 4)}
    metrics = {"recipe": name, "pretrain": {"teacher_forced": []},
               "evaluations": {k: made[k] for k in evaluations}}
    if nulls:  # as json.dumps writes a layer with nothing counted, and a blow-up's inf
        stacked = metrics["evaluations"]["stacked"]
        stacked["rollout"]["simplex"]["median"][2] = None
        stacked["rollout"]["simplex"]["p90"][-1] = 1.8e308
        stacked["progress_ratio"]["median"][0] = -1.8e308
    return json.loads(json.dumps(metrics))


def blank_png_size(fig: Figure) -> int:
    """The PNG size of empty axes on a figure of `fig`'s size, saved as `save` saves."""
    blank = Figure(figsize=fig.get_size_inches())
    blank.add_subplot()
    buffer = io.BytesIO()
    blank.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    return len(buffer.getvalue())


def check_saved(fig: Figure, tmp_path, name: str) -> None:
    png, pdf = save(fig, tmp_path / name)
    assert png.suffix == ".png" and pdf.suffix == ".pdf"
    assert png.stat().st_size > 1.5 * blank_png_size(fig)
    assert pdf.stat().st_size > 1000


def test_depth_errors_draw_both_errors_of_every_evaluation(tmp_path):
    fig, ax = plot_depth_errors(run_metrics())
    assert ax.get_yscale() == "log"
    # 4 evaluations x (teacher-forced, rollout), the identity rollout, the threshold, and the
    # breakdowns of stacked and looped (finetuned holds; the control's is not drawn)
    assert len(ax.lines) == 4 * 2 + 1 + 1 + 2
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 3 * 2
    assert [t.get_text() for t in ax.texts] == ["breaks at 5", "breaks at 4"]
    assert "simplex" in ax.get_ylabel()
    check_saved(fig, tmp_path, "depth")


def test_depth_errors_take_nulls_a_field_and_a_missing_evaluation(tmp_path):
    metrics = run_metrics(evaluations=("stacked",), nulls=True)
    fig, ax = plot_depth_errors(metrics, field="fvals")
    assert "fvals" in ax.get_ylabel()
    fig, ax = plot_depth_errors(metrics)
    rollout = ax.lines[1].get_ydata()
    assert np.isnan(rollout[2]) and np.isfinite(rollout[[0, 1, 3]]).all()
    assert ax.get_ylim()[1] < 1e10  # the written inf does not stretch the axis
    check_saved(fig, tmp_path, "depth_nulls")
    with pytest.raises(ValueError, match="no evaluations"):
        plot_depth_errors({"recipe": "pretrained only", "pretrain": {}})


def test_objective_depth_has_the_teacher_each_stack_and_the_progress_ratio(tmp_path):
    fig, ax = plot_objective_depth(run_metrics(nulls=True))
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == 1 + 4  # teacher and four evaluations
    assert [line.get_label() for line in ax.lines][0] == "teacher"
    ratio = [a for a in fig.axes if a is not ax]
    assert len(ratio) == 1 and len(ratio[0].lines) == 4 + 2  # evaluations, lines at 1 and 0
    check_saved(fig, tmp_path, "objective")
    fig, ax = plot_objective_depth(run_metrics(evaluations=("finetuned",)))
    assert len(ax.lines) == 2
    alone = Figure().add_subplot()
    fig, ax = plot_objective_depth(run_metrics(), ax=alone)
    assert ax is alone and fig.axes == [alone]  # no ratio panel unless given one


def test_compare_draws_one_line_per_run_and_marks_breakdowns(tmp_path):
    runs = {"a": run_metrics("a"), "b": run_metrics("b", evaluations=("stacked",)),
            "c": run_metrics("c", evaluations=("finetuned", "untrained"))}
    fig, ax = plot_compare(runs)
    assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
    assert labels == ["a (finetuned, simplex): holds to 6", "b (stacked, simplex): breaks at 5",
                      "c (finetuned, simplex): holds to 6"]
    markers = [line for line in ax.lines if line.get_marker() == "X"]
    assert [m.get_xdata()[0] for m in markers] == [5]
    check_saved(fig, tmp_path, "compare")
    with pytest.raises(ValueError, match="trained stack"):
        plot_compare({"control only": run_metrics(evaluations=("untrained",))})


def tiny_run(teacher: str, dim: int = 2):
    """A recipe, its test problems and rollout, and an untrained stack of it (width 32)."""
    recipe = recipe_from_dict({
        "name": f"tiny_{teacher}", "steps": 3, "problem": {"dim": dim},
        "teacher": {"name": teacher}, "block": {"width": 32, "heads": 2},
        "data": {"test_problems": 4, "cache_dir": ""},
    })
    problem, traj = load_or_roll_out(data_splits(recipe)["test"], None)
    codec = build_codec(recipe, problem)
    blocks = [new_block(recipe, k) for k in range(1, recipe.steps + 1)]
    return recipe, problem, traj, Stack(codec, ReadIO(codec.token_dim, 32), blocks)


def test_stack_trajectories_of_nelder_mead_draw_both_simplices(tmp_path):
    _, problem, traj, stack = tiny_run("nelder_mead")
    fig, ax = plot_stack_trajectories(stack, problem, traj, index=1, layers=[1, 3])
    simplices = [p for p in ax.patches if isinstance(p, Polygon)]
    assert sorted(p.get_linestyle() for p in simplices) == ["-", "-", "--", "--"]
    assert ax.collections  # the contours
    check_saved(fig, tmp_path, "nm")


def test_stack_trajectories_of_cma_es_draw_means_and_ellipses(tmp_path):
    _, problem, traj, stack = tiny_run("cma_es")
    fig, ax = plot_stack_trajectories(stack, problem, traj)
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) >= 3  # the teacher's at every default layer; the stack's if finite
    check_saved(fig, tmp_path, "cma")
    with pytest.raises(ValueError, match="layers"):
        plot_stack_trajectories(stack, problem, traj, layers=[4])


def test_stack_trajectories_refuse_other_dimensions():
    _, problem, traj, stack = tiny_run("nelder_mead", dim=3)
    with pytest.raises(ValueError, match="n = 3"):
        plot_stack_trajectories(stack, problem, traj)


def test_plot_runs_writes_a_run_s_figures_and_a_comparison(tmp_path, monkeypatch):
    recipe, _, _, stack = tiny_run("nelder_mead")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(dump_recipe(recipe))
    (run / "metrics.json").write_text(json.dumps(run_metrics(recipe.name, nulls=True)))
    save_stack(stack.float(), recipe, run / "checkpoint")
    paths = plot_runs([run])
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{n}.{s}" for n in ("depth_errors", "objective", "trajectories")
                           for s in ("png", "pdf"))
    assert all(p.parent == run / "plots" and p.stat().st_size > 1000 for p in paths)

    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps(run_metrics(recipe.name)))
    monkeypatch.chdir(tmp_path)  # the comparison goes to ./compare by default
    assert plot_runs([run, other]) == [tmp_path / "compare.png", tmp_path / "compare.pdf"]
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_plot_runs_draws_a_checkpoint_directory_outside_it(tmp_path, monkeypatch):
    recipe, _, _, stack = tiny_run("nelder_mead")
    stored = json.loads(json.dumps(layer_metrics(1.5, None)))
    saved = save_stack(stack.float(), recipe, tmp_path / "ckpt", stored, stage="finetuned")
    assert checkpoint_metrics(saved) == {"recipe": recipe.name,
                                         "evaluations": {"finetuned": stored}}
    monkeypatch.chdir(tmp_path)  # a checkpoint's figures go to ./plots/<its name> by default
    paths = plot_runs([saved])
    names = sorted(f"{n}.{s}" for n in ("depth_errors", "objective", "trajectories")
                   for s in ("png", "pdf"))
    assert sorted(p.name for p in paths) == names
    assert all(p.parent == tmp_path / "plots" / "ckpt" and p.stat().st_size > 1000
               for p in paths)
    assert sorted(os.listdir(saved)) == ["config.json", "model.safetensors"]  # still loadable
    assert main(["plot", str(saved), "--out", str(tmp_path / "figures")]) == 0
    assert sorted(os.listdir(tmp_path / "figures")) == names

    # Saved without metrics: evaluated on fresh test problems, as `blockwise eval` does.
    bare = save_stack(stack.float(), recipe, tmp_path / "bare", stage="stacked")
    assert checkpoint_metrics(bare) == {"recipe": recipe.name,
                                        "evaluations": {"stacked": eval_checkpoint(bare)}}
    assert plot_runs([saved, bare]) == [tmp_path / "compare.png", tmp_path / "compare.pdf"]


def test_plot_runs_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no metrics.json"):
        plot_runs([tmp_path / "empty"])
    with pytest.raises(ValueError, match="missing is not a directory"):
        plot_runs([tmp_path / "missing"])
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "blockwise plot: error:" in capsys.readouterr().err
