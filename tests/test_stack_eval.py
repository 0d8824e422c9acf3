"""evaluate_stack against independent recomputation: a perfect stack, the identity stack, an
untrained one; branch splits, left-out and blown-up problems, running past the stack's depth,
JSON, and the Metrics merged as two processes' states would be."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import pytest
import torch
from identity_stack import identity_blocks

from blockwise import problems, teachers
from blockwise.build import build_codec, new_block
from blockwise.codec import make_codec
from blockwise.config import recipe_from_dict, recipe_to_dict
from blockwise.evaluation import (
    LayerErrors,
    ProgressRatio,
    eval_checkpoint,
    evaluate_stack,
    format_table,
    quantiles,
    stack_eval,
    teacher_forced_errors,
)
from blockwise.model import ReadIO
from blockwise.rollout import Trajectory, rollout
from blockwise.stack import Stack
from blockwise.teachers.nelder_mead import BRANCHES, NelderMead

B, K = 64, 3
RECIPE = recipe_from_dict({"steps": K, "block": {"width": 32, "heads": 4}})
BIG = sys.float_info.max  # what inf becomes in the JSON-able result


def sample(count: int, steps: int, seed: int = 5):
    problem = problems.make("quadratic", count, 2, seed, **RECIPE.problem.settings)
    return problem, rollout("nelder_mead", problem, problem.sample_x0(seed=seed), steps)


@pytest.fixture(scope="module")
def data():
    return sample(B, K)


def make_stack(problem, blocks=None) -> Stack:
    """A float64 stack of untrained blocks (float64: the identity stack decodes exactly)."""
    codec = build_codec(RECIPE, problem)
    blocks = blocks or [new_block(RECIPE, k) for k in range(1, K + 1)]
    return Stack(codec, ReadIO(codec.token_dim, RECIPE.block.width), blocks).double()


def error(pred, target, prev):
    """Per-problem ||pred - target|| / ||target - prev||, written out again."""
    miss = (pred - target).flatten(1).norm(dim=1)
    return miss / (target - prev).flatten(1).norm(dim=1)


def summary(values):
    """{"median", "p10", "p90"} by torch.quantile over the non-NaN values."""
    values = values[~values.isnan()]
    q = torch.quantile(values, torch.tensor([0.5, 0.1, 0.9], dtype=values.dtype))
    return dict(zip(("median", "p10", "p90"), q.tolist(), strict=True))


def assert_summary(result, layer, expected):
    for name, value in expected.items():
        assert result[name][layer - 1] == pytest.approx(value, rel=1e-12, abs=1e-300), name


def test_an_untrained_stack_agrees_with_recomputation(data):
    problem, traj = data
    stack = make_stack(problem)
    result = evaluate_stack(stack, problem, traj)
    with torch.no_grad():
        forced = stack.teacher_forced(problem, traj)
        rolled = stack(problem, traj[0])
    f_star = problem(problem.minimizer()[:, None])[:, 0]
    gap = lambda s: (problem(s["simplex"][:, :1])[:, 0] - f_star).clamp(min=1e-300)  # noqa: E731
    for k in range(1, K + 1):
        for f in ("simplex", "fvals"):
            prev, target = traj[k - 1][f], traj[k][f]
            for kind, pred in (
                ("teacher_forced", forced[k - 1][f]),
                ("rollout", rolled[k - 1][f]),
                ("identity_rollout", traj[0][f]),
            ):
                assert_summary(result[kind][f], k, summary(error(pred, target, prev)))
        start, teacher, emulated = gap(traj[0]), gap(traj[k]), gap(rolled[k - 1])
        assert_summary(
            {n: v[1:] for n, v in result["objective"]["emulated"].items()}, k, summary(emulated)
        )
        ratio = (start / emulated).log() / (start / teacher).log()
        assert_summary(result["progress_ratio"], k, summary(ratio[teacher < start]))
    assert_summary(result["objective"]["teacher"], 1, summary(gap(traj[0])))
    assert result["identity_rollout"]["simplex"]["median"][0] == 1.0  # exactly, by definition


def test_a_perfect_stack_has_no_error_and_the_teachers_progress(data, monkeypatch):
    problem, traj = data
    stack = make_stack(problem)
    monkeypatch.setattr(stack, "layer", lambda k, state, problem: traj[k])
    result = evaluate_stack(stack, problem, traj)
    for kind in ("teacher_forced", "rollout"):
        for by_name in result[kind].values():
            assert by_name == {"median": [0.0] * K, "p10": [0.0] * K, "p90": [0.0] * K}
    assert result["progress_ratio"] == {"median": [1.0] * K, "p10": [1.0] * K, "p90": [1.0] * K}
    assert result["objective"]["emulated"] == result["objective"]["teacher"]
    assert result["breakdown_depth"] is None


def test_the_identity_stack_scores_one_and_breaks_down_at_once(data):
    problem, traj = data
    stack = make_stack(problem, identity_blocks(RECIPE))
    result = evaluate_stack(stack, problem, traj, threshold=0.5)
    for f in ("simplex", "fvals"):
        for name in ("median", "p10", "p90"):
            assert result["teacher_forced"][f][name] == pytest.approx([1.0] * K, abs=1e-9)
            assert result["rollout"][f][name] == pytest.approx(
                result["identity_rollout"][f][name], rel=1e-9
            )
    for name in ("median", "p10", "p90"):
        assert result["progress_ratio"][name] == pytest.approx([0.0] * K, abs=1e-9)
    assert result["breakdown_depth"] == 1
    untrained = evaluate_stack(make_stack(problem), problem, traj, threshold=1e9)
    assert untrained["breakdown_depth"] is None


def test_branch_split_counts_every_problem_once(data):
    problem, traj = data
    stack = make_stack(problem)
    result = evaluate_stack(stack, problem, traj)
    assert list(result["branches"]) == list(BRANCHES)
    with torch.no_grad():
        forced = stack.teacher_forced(problem, traj)
    for k in range(1, K + 1):
        taken = traj.extras["branch"][k - 1]
        counts = [result["branches"][b]["simplex"]["count"][k - 1] for b in BRANCHES]
        assert counts == torch.bincount(taken, minlength=len(BRANCHES)).tolist()
        assert sum(counts) == B
        expand = taken == BRANCHES.index("expand")
        e = error(forced[k - 1]["simplex"], traj[k]["simplex"], traj[k - 1]["simplex"])
        expected = summary(e[expand])["median"]
        assert result["branches"]["expand"]["simplex"]["median"][k - 1] == pytest.approx(expected)


def test_parallel_nelder_mead_is_split_by_its_worst_vertex():
    teacher = teachers.make("parallel_nelder_mead", parallelism=2)
    problem = problems.make("quadratic", 32, 2, 3)
    traj = rollout(teacher, problem, problem.sample_x0(seed=3), 2)
    codec = make_codec(teacher, problem)
    stack = Stack(codec, ReadIO(codec.token_dim, 32), [new_block(RECIPE, k) for k in (1, 2)])
    result = evaluate_stack(stack, problem, traj)
    for k in (1, 2):
        worst = traj.extras["branch"][k - 1][:, -1]
        counts = [result["branches"][b]["fvals"]["count"][k - 1] for b in BRANCHES]
        assert counts == torch.bincount(worst, minlength=len(BRANCHES)).tolist()


def test_diverged_problems_are_left_out_and_blowups_count_as_infinite(data):
    problem, traj = data
    diverged = traj.diverged.clone()
    diverged[2:, :5] = True
    marked = Trajectory(traj.states, traj.extras, diverged)
    stack = make_stack(problem)
    result = evaluate_stack(stack, problem, marked)
    counts = [sum(result["branches"][b]["simplex"]["count"][k] for b in BRANCHES) for k in range(K)]
    assert counts == [B, B - 5, B - 5]
    with torch.no_grad():
        forced = stack.teacher_forced(problem, traj)
    e = error(forced[1]["simplex"], traj[2]["simplex"], traj[1]["simplex"])
    assert_summary(result["teacher_forced"]["simplex"], 2, summary(e[5:]))

    layer = stack.layer

    def blows_up(k, state, problem):
        out = layer(k, state, problem)
        if k == 2:  # a quarter of the problems leave the floats at layer 2
            simplex = out["simplex"].clone().index_fill_(0, torch.arange(16), math.nan)
            out = {**out, "simplex": simplex}
        return out

    stack.layer = blows_up
    result = evaluate_stack(stack, problem, traj)
    assert result["rollout"]["simplex"]["p90"][1:] == [BIG, BIG]
    assert result["rollout"]["simplex"]["median"][1] < BIG  # three quarters still finite
    assert result["objective"]["emulated"]["p90"][2:] == [BIG, BIG]
    assert result["progress_ratio"]["p10"][1:] == [-BIG, -BIG]
    assert result["teacher_forced"]["simplex"]["p90"][1] == BIG


def test_the_per_block_table_is_evaluate_stacks_teacher_forced_error(data):
    problem, traj = data
    diverged = traj.diverged.clone()
    diverged[2:, :5] = True  # left out of layers 2 and 3
    traj = Trajectory(traj.states, traj.extras, diverged)
    trained, untrained = make_stack(problem, identity_blocks(RECIPE)), make_stack(problem)
    trained.eval()
    untrained.train()
    rows = teacher_forced_errors({"trained": trained, "untrained": untrained}, problem, traj)
    assert untrained.training and not trained.training  # handed back as they came
    evaluated = {"trained": evaluate_stack(trained, problem, traj),
                 "untrained": evaluate_stack(untrained, problem, traj)}
    with torch.no_grad():
        forced = untrained.teacher_forced(problem, traj)
    assert [r["layer"] for r in rows] == [1, 2, 3]
    assert [r["count"] for r in rows] == [B, B - 5, B - 5]
    for k, row in enumerate(rows, start=1):
        kept = ~diverged[k]
        for f in ("simplex", "fvals"):
            by_label = row["fields"][f]
            assert list(by_label) == ["trained", "untrained", "identity"]
            for label, result in evaluated.items():
                for name in ("median", "p10", "p90"):  # one measure: the same floats
                    assert by_label[label][name] == result["teacher_forced"][f][name][k - 1]
            e = error(forced[k - 1][f], traj[k][f], traj[k - 1][f])[kept]
            assert by_label["untrained"] == pytest.approx(summary(e) | {"count": len(e)},
                                                          rel=1e-12)
            assert by_label["identity"] == {"median": 1.0, "p10": 1.0, "p90": 1.0,
                                            "count": B if k == 1 else B - 5}
    table = format_table(rows).splitlines()
    assert table[0].split() == ["block", "field", "trained", "untrained", "identity"]
    median = rows[2]["fields"]["fvals"]["untrained"]["median"]
    assert table[-1].split()[:2] == ["3", "fvals"] and f"{median:.3g}" in table[-1].split()
    with pytest.raises(ValueError, match="identity"):
        teacher_forced_errors({"identity": trained}, problem, traj)


@dataclasses.dataclass(frozen=True)
class Relabelled(NelderMead):
    """Nelder–Mead with other branch names: evaluation must follow the declaration."""

    branches = tuple(f"b{code}" for code in range(len(BRANCHES)))


def test_errors_are_split_by_the_branches_a_teacher_declares(data):
    problem, traj = data
    stack = make_stack(problem)
    stack.codec.teacher = Relabelled()
    result = evaluate_stack(stack, problem, traj)
    assert list(result["branches"]) == list(Relabelled.branches)
    for k in range(1, K + 1):
        counts = [result["branches"][b]["simplex"]["count"][k - 1] for b in Relabelled.branches]
        assert counts == torch.bincount(traj.extras["branch"][k - 1], minlength=6).tolist()
    gd = teachers.make("gradient_descent", lr=0.1)
    gd_traj = rollout(gd, problem, problem.sample_x0(seed=1), 2)
    codec = make_codec(gd, problem)
    blocks = [new_block(RECIPE, k) for k in (1, 2)]
    gd_stack = Stack(codec, ReadIO(codec.token_dim, RECIPE.block.width), blocks)
    assert gd.branches == () and evaluate_stack(gd_stack, problem, gd_traj)["branches"] == {}


def test_quantiles_agree_with_torch_and_take_inf_as_the_worst():
    x = torch.rand(101, dtype=torch.float64)
    ours = quantiles(x)
    ref = torch.quantile(x, torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64))
    assert [ours[n].item() for n in ("median", "p10", "p90")] == ref.tolist()
    blown = torch.cat([x[:90], torch.full((11,), math.inf, dtype=torch.float64)])
    q = quantiles(blown)
    assert q["p90"].item() == math.inf
    assert q["median"].item() == torch.quantile(torch.cat([x[:90], torch.ones(11)]), 0.5).item()
    assert quantiles(torch.tensor([1.0, math.inf]))["p10"].item() == math.inf  # 1 + 0.1 (inf - 1)
    assert quantiles(torch.empty(0))["median"].isnan()


def test_running_past_the_stacks_depth_repeats_its_last_block():
    problem, traj = sample(16, 5)
    stack = make_stack(problem)
    result = evaluate_stack(stack, problem, traj, layers=5, beyond="last")
    assert result["layers"] == 5 and len(result["objective"]["teacher"]["median"]) == 6
    state = traj[0]
    with torch.no_grad():
        for k in range(1, 6):
            state = stack.layer(min(k, K), state, problem)
            e = error(state["simplex"], traj[k]["simplex"], traj[k - 1]["simplex"])
            assert_summary(result["rollout"]["simplex"], k, summary(e))
    with pytest.raises(ValueError, match="beyond='last'"):
        evaluate_stack(stack, problem, traj, layers=5)
    with pytest.raises(ValueError, match="at least 6 steps"):
        evaluate_stack(stack, problem, traj, layers=6, beyond="last")


def test_the_result_is_strict_json_in_the_documented_schema(data):
    problem, traj = data
    result = evaluate_stack(make_stack(problem), problem, traj)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert list(result) == [
        "layers", "problems", "fields", "primary", "threshold", "teacher_forced", "rollout",
        "identity_rollout", "objective", "progress_ratio", "breakdown_depth", "branches",
    ]
    assert (result["layers"], result["problems"], result["primary"]) == (K, B, "simplex")
    assert result["fields"] == ["simplex", "fvals"]
    for kind in ("teacher_forced", "rollout", "identity_rollout"):
        assert all(len(v) == K for s in result[kind].values() for v in s.values())
    assert all(len(v) == K + 1 for s in result["objective"].values() for v in s.values())
    # A branch no problem took has no median: None, not NaN.
    assert None in result["branches"]["outside_contraction"]["simplex"]["median"]


def test_metrics_merged_from_two_processes_equal_one_pass():
    torch.manual_seed(0)
    errors = torch.rand(3, 40, dtype=torch.float64)
    errors[0, :3] = math.nan  # left out
    errors[2, :4] = math.inf  # blown up
    once, halves, other = (LayerErrors(3, ["x"]) for _ in range(3))
    for k in range(1, 4):
        once.update(k, "x", errors[k - 1])
        halves.update(k, "x", errors[k - 1, :25])
        other.update(k, "x", errors[k - 1, 25:])
    whole = once.compute()["x"]
    halves.merge_state(other)  # what the "cat" sync of two processes does
    merged = halves.compute()["x"]
    for name in ("median", "p10", "p90", "count"):
        torch.testing.assert_close(merged[name], whole[name], rtol=0, atol=0)
    assert whole["count"].tolist() == [37, 40, 40]
    assert whole["p90"][2].item() == math.inf

    start = torch.full((40,), 10.0, dtype=torch.float64)
    teacher, emulated = torch.rand(2, 40, dtype=torch.float64) * 5
    one, a, b = (ProgressRatio(1) for _ in range(3))
    one.update(1, start, teacher, emulated)
    a.update(1, start[:10], teacher[:10], emulated[:10])
    b.update(1, start[10:], teacher[10:], emulated[10:])
    a.merge_state(b)
    for name, value in one.compute().items():
        torch.testing.assert_close(a.compute()[name], value, rtol=0, atol=0)


def test_eval_checkpoint_reevaluates_a_saved_stack(data, monkeypatch):
    problem, _ = data
    stack = make_stack(problem)
    config = {"recipe": recipe_to_dict(RECIPE), "depth": K}
    monkeypatch.setattr(stack_eval, "read_config", lambda path: config)
    monkeypatch.setattr(stack_eval, "load_stack", lambda path: stack)

    result = eval_checkpoint("ckpt", problems=16, steps=K + 2)
    seed = RECIPE.data.test_seed
    fresh = problems.make("quadratic", 16, 2, seed, **RECIPE.problem.settings)
    traj = rollout("nelder_mead", fresh, fresh.sample_x0(seed=seed), K + 2)
    assert result == evaluate_stack(stack, fresh, traj, layers=K + 2, beyond="last")
    with pytest.raises(ValueError, match="depends on n"):
        eval_checkpoint("ckpt", dim=3)
    with pytest.raises(ValueError, match="slots"):
        eval_checkpoint("ckpt", family="rosenbrock", problems=4)
    with pytest.raises(ValueError, match="held-out"):
        eval_checkpoint("ckpt", seed=RECIPE.data.train_seed)
    with pytest.raises(ValueError, match="beyond='last'"):
        eval_checkpoint("ckpt", problems=4, steps=K + 1, beyond="none")
