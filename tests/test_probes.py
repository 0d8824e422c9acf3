"""The probes' instruments against independent references, the GD stack's known mechanism
(von Oswald et al. 2023), and `blockwise probe` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from blockwise import problems, teachers
from blockwise.checkpoints import load_stack, read_config, save_stack
from blockwise.cli import main
from blockwise.codec import make_codec
from blockwise.config import recipe_from_dict
from blockwise.evaluation import evaluate_stack
from blockwise.model import ReadIO
from blockwise.probes import capture_layer, linear_cka, probe, run_with_cache
from blockwise.probes.attention import residual_fit
from blockwise.probes.capture import beyond_slots, features
from blockwise.probes.counterfactual import counterfactual, restart
from blockwise.probes.linear import RidgeProbe
from blockwise.probes.ood import measure, more_steps
from blockwise.probes.quantities import Quantity, teacher_quantities
from blockwise.probes.report import report
from blockwise.probes.run import default_layers, ood_problems, untrained
from blockwise.probes.similarity import circuits, cka_matrix
from blockwise.probes.sites import probe_layer
from blockwise.rollout import rollout
from blockwise.stack import Stack

QUICKSTART, GD = "checkpoints/quickstart", "checkpoints/gd_least_squares"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gd_probed() -> dict:
    """The GD stack probed at every layer on 256 problems, without writing (shared: ~2 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return probe(GD, problems=256, write=False)
    finally:
        torch.set_num_threads(before)


def _problems(path: str, count: int, seed: int = 1009):
    """`count` fresh problems of the checkpoint's recipe and its teacher's s_0 on them."""
    recipe = recipe_from_dict(read_config(path)["recipe"])
    p = recipe.problem
    problem = problems.make(p.family, count, p.dim, seed, **p.settings)
    x0 = problem.sample_x0(seed=seed, radius=p.x0_radius)
    return recipe, problem, x0


# ---------------------------------------------------------------- capture


def test_capture_reproduces_the_layer_and_its_hooks_add_up():
    stack = load_stack(QUICKSTART)
    _, problem, x0 = _problems(QUICKSTART, 40)
    state = stack.codec.teacher.init(problem, x0)
    captured = capture_layer(stack, 2, state, problem, chunk=16)  # chunks of 16, 16 and 8
    expected = stack.layer(2, state, problem)
    for field in stack.codec.learned_fields:
        torch.testing.assert_close(captured.state[field], expected[field], rtol=1e-6, atol=1e-9)
    c, block = captured.cache, stack.block(2)
    assert c["attn.hook_pattern"].shape == (40, 4, 7, 7)
    torch.testing.assert_close(c["attn.hook_pattern"].sum(-1), torch.ones(40, 4, 7))
    # float32, and the problem tokens of a flat simplex run to thousands: compare at that scale
    z_out = c["attn.hook_z"] @ block.attn.out.weight.T + block.attn.out.bias
    scale = float(c["hook_resid_post"].abs().max())
    torch.testing.assert_close(z_out, c["hook_attn_out"], rtol=0, atol=1e-6 * scale)
    update = c["hook_attn_out"] + c["hook_mlp_out"]  # pre-norm: both add to the stream
    torch.testing.assert_close(c["hook_resid_post"] - c["hook_resid_pre"], update,
                               rtol=0, atol=1e-6 * scale)
    assert not block._forward_hooks and not block._forward_pre_hooks  # all removed


def test_run_with_cache_keeps_the_chosen_layers_as_the_full_run_has_them():
    stack = load_stack(QUICKSTART)
    _, problem, x0 = _problems(QUICKSTART, 40)
    s0 = stack.codec.teacher.init(problem, x0)
    hooks = ("hook_resid_pre", "attn.hook_pattern")
    full_states, full = run_with_cache(stack, problem, s0, hooks=hooks, chunk=16)
    states, cache = run_with_cache(stack, problem, s0, layers=[4, 2], hooks=hooks, chunk=16)
    assert sorted(cache) == ["blocks.1.attn.hook_pattern", "blocks.1.hook_resid_pre",
                             "blocks.3.attn.hook_pattern", "blocks.3.hook_resid_pre"]
    for name, value in cache.items():
        assert torch.equal(value, full[name])
    for field in stack.codec.learned_fields:  # the states after layers 2 and 4
        assert torch.equal(states[0][field], full_states[1][field])
        assert torch.equal(states[1][field], full_states[3][field])


def test_run_with_cache_names_every_layer_like_transformer_lens():
    stack = load_stack(GD)
    _, problem, x0 = _problems(GD, 8)
    states, cache = run_with_cache(stack, problem, stack.codec.teacher.init(problem, x0),
                                   hooks=("hook_resid_post", "hook_mlp_out"))
    assert sorted(cache) == [f"blocks.{i}.hook_resid_post" for i in range(4)]  # no MLP
    assert len(states) == 4 and cache["blocks.3.hook_resid_post"].shape == (8, 12, 32)
    with pytest.raises(ValueError, match="unknown hook"):
        run_with_cache(stack, problem, states[0], hooks=("hook_q",))


def test_the_slots_removed_are_the_read_in_and_read_out_directions():
    readio = ReadIO(5, 9)
    torch.testing.assert_close(beyond_slots(readio), torch.eye(9)[:, 5:])
    assert beyond_slots(ReadIO(5, 5)) is None  # nothing remains beyond the slots
    with torch.no_grad():
        readio.read_in.weight.copy_(torch.randn(9, 5))
        readio.read_out.weight.copy_(torch.randn(5, 9))
        readio.read_out.weight[2:] = readio.read_in.weight[:, :3].T  # rank 5 + 2 together
    basis = beyond_slots(readio)
    assert basis.shape == (9, 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), rtol=0, atol=1e-5)
    used = torch.cat([readio.read_in.weight, readio.read_out.weight.T], 1)
    assert (basis.T @ used).abs().max() < 1e-5


def test_a_stream_as_wide_as_the_slots_has_no_site_beyond_them():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    sites = {"input": x, "stream": x, "beyond_slots": None, "heads": x}
    quantities = {"q": Quantity(x[:, :2] @ torch.ones(2, 1, dtype=torch.float64), "q")}
    train = torch.arange(200) < 150
    scores, rows = probe_layer(sites, sites, quantities, train, torch.randperm(150))
    assert scores["q"]["beyond_slots"] is None
    assert scores["q"]["stream"]["r2"] > 0.999 and rows["train"] <= 150


# ---------------------------------------------------------------- quantities


def test_nelder_mead_quantities_are_the_teachers_in_the_affine_frame():
    stack = load_stack(QUICKSTART)
    _, problem, x0 = _problems(QUICKSTART, 64)
    traj = rollout(stack.codec.teacher, problem, x0, 2)
    enc = stack.codec.encode(traj[1], problem)
    q = teacher_quantities(enc, problem, stack.codec)
    simplex, fvals = traj[1]["simplex"], traj[1]["fvals"]
    # In the frame where the simplex is 0, e_1, e_2 the centroid of the two best is (1/2, 0)
    # and the reflection of the worst through it (1, -1): the frame computes them.
    affine = torch.isclose(enc.frame.edges, (simplex[:, 1:] - simplex[:, :1]).mT).all((1, 2))
    assert affine.float().mean() > 0.9
    torch.testing.assert_close(q["centroid"].values[affine],
                               torch.tensor([0.5, 0.0], dtype=torch.float64).expand(
                                   int(affine.sum()), 2), rtol=0, atol=1e-9)
    reflected = simplex[:, 0] + simplex[:, 1] - simplex[:, 2]  # 2 xbar - worst, rho = 1
    f = problem(reflected[:, None])[:, 0]
    expected = (f - fvals[:, 0]) / (fvals[:, 2] - fvals[:, 0])
    torch.testing.assert_close(q["f_reflected"].values[:, 0], expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(q["branch"].values, traj.extras["branch"][1])
    assert q["moved"].classes[4] == "ranks 2"  # the worst vertex, bit 2


def test_gradient_quantities_are_the_teachers_step_and_the_residuals():
    stack = load_stack(GD)
    _, problem, x0 = _problems(GD, 32)
    state = stack.codec.teacher.init(problem, x0)
    q = teacher_quantities(stack.codec.encode(state, problem), problem, stack.codec)
    after, _ = stack.codec.teacher.step(problem, state)  # lr 1: x - g
    torch.testing.assert_close(q["gradient"].values, state["x"] - after["x"])
    xs, ys, w = problem.params["x"].numpy(), problem.params["y"].numpy(), state["x"].numpy()
    np.testing.assert_allclose(q["residuals"].values.numpy(),
                               np.einsum("bnd,bd->bn", xs, w) - ys, atol=1e-12)


def test_cma_quantities_rank_the_candidates_and_give_the_mean_shift():
    teacher = teachers.make("cma_es")
    problem = problems.make("quadratic", 16, 3, 5)
    codec = make_codec(teacher, problem, mode="oracle", frame="scale")
    state = teacher.init(problem, problem.sample_x0(seed=6))
    enc = codec.encode(state, problem)
    q = teacher_quantities(enc, problem, codec)
    _, extras = teacher.step(problem, state)
    order = torch.argsort(extras["fvals"], dim=-1, stable=True)
    assert torch.equal(q["candidate_ranks"].values.argsort(-1), order)
    after, _ = teacher.step(problem, state)
    shift = (after["mean"] - state["mean"]) / state["sigma"][:, None]
    torch.testing.assert_close(q["mean_shift"].values, shift)


# ---------------------------------------------------------------- similarity, attention


def test_linear_cka_is_one_for_a_representation_and_its_rotations_and_small_for_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=g, dtype=torch.float64) @ torch.randn(
        6, 6, generator=g, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.0 * x @ rotation + 7.0) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, torch.randn(2000, 6, generator=g, dtype=torch.float64)) < 0.02
    reps = [x, x @ rotation, x[:, :3]]
    matrix = cka_matrix(reps)
    for i in range(3):
        for j in range(3):
            assert matrix[i][j] == pytest.approx(linear_cka(reps[i], reps[j]), abs=1e-12)


def test_circuits_sum_each_heads_qk_and_ov():
    block = load_stack(QUICKSTART).block(1)
    width, heads = block.attn.width, block.attn.heads
    w_q, w_k, w_v = block.attn.qkv.weight.detach().double().split(width)
    w_o = block.attn.out.weight.detach().double()
    size = width // heads
    qk = sum(w_q[h * size:(h + 1) * size].T @ w_k[h * size:(h + 1) * size] for h in range(heads))
    ov = sum(w_o[:, h * size:(h + 1) * size] @ w_v[h * size:(h + 1) * size] for h in range(heads))
    got_qk, got_ov = circuits(block)
    torch.testing.assert_close(got_qk, qk)
    torch.testing.assert_close(got_ov, ov)


def test_residual_fit_finds_scores_that_are_an_affine_function_of_the_residuals():
    stack = load_stack(GD)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(50, 10, generator=g, dtype=torch.float64)
    pattern = torch.randn(50, 1, 12, 12, generator=g, dtype=torch.float64)
    pattern[:, 0, 11, :10] = 2 * r + 1  # the iterate (token 11) queries the context (0..9)
    assert residual_fit(pattern, stack.codec, Quantity(r, "r")) == [pytest.approx(1.0)]
    pattern[:, 0, 11, :10] = torch.randn(50, 10, generator=g, dtype=torch.float64)
    assert residual_fit(pattern, stack.codec, Quantity(r, "r"))[0] < 0.05


# ---------------------------------------------------------------- the GD stack's mechanism


def test_the_gd_stack_computes_the_gradient_in_its_head_from_the_residuals():
    """von Oswald et al. 2023: the layer's head computes the gradient, its attention scores
    from the iterate to the context pairs are their residuals. The untrained stack's are not."""
    stack = load_stack(GD)
    recipe, problem, x0 = _problems(GD, 600)
    control = untrained(stack, recipe)
    state = stack.codec.teacher.init(problem, x0)
    mine = capture_layer(stack, 1, state, problem)
    theirs = capture_layer(control, 1, state, problem)
    q = teacher_quantities(mine.enc, problem, stack.codec)
    iterate = stack.codec.positions["iterate"]
    heads = {who: features(c.cache["attn.hook_z"][:, iterate]) for who, c in
             (("trained", mine), ("control", theirs))}
    fit = {who: RidgeProbe(h[:450], h[450:]).score(q["gradient"].values[:450],
                                                   q["gradient"].values[450:]).r2
           for who, h in heads.items()}
    assert fit["trained"] > 0.999 and fit["control"] < fit["trained"] - 0.3
    scores = {who: residual_fit(c.cache["attn.hook_pattern"], stack.codec, q["residuals"])[0]
              for who, c in (("trained", mine), ("control", theirs))}
    assert scores["trained"] > 0.999 and scores["control"] < 0.5


def test_restart_re_sorts_a_simplex_by_the_new_objective():
    teacher = teachers.make("nelder_mead")
    p, q = problems.make("quadratic", 8, 2, 1), problems.make("quadratic", 8, 2, 2)
    state = teacher.init(p, p.sample_x0(seed=3))
    moved = restart(state, q)
    f = q(moved["simplex"])
    torch.testing.assert_close(moved["fvals"], f)
    assert (moved["fvals"][:, 1:] >= moved["fvals"][:, :-1]).all()


def test_an_exact_gd_stack_retargets_as_the_teacher_does():
    stack = load_stack(GD)
    _, problem, x0 = _problems(GD, 128)
    _, other, _ = _problems(GD, 128, seed=1010)
    cf = counterfactual(stack, problem, other, stack.codec.teacher.init(problem, x0), 2, 4)
    assert cf["layer"] == [2, 3, 4] and cf["counted"] == [128] * 3
    assert all(abs(r - 1) < 1e-3 for r in cf["retarget"])
    assert all(abs(c) < 1e-3 for c in cf["control"])


# ---------------------------------------------------------------- end to end


def test_probe_gd_stack_end_to_end_without_writing(gd_probed):
    results = gd_probed
    json.dumps(results, allow_nan=False)  # strict JSON
    gradient = results["probes"]["gradient"]
    assert len(gradient["heads"]["r2"]) == 4 and gradient["beyond_slots"] is not None
    assert all(r > 0.99 for r in gradient["heads"]["r2"])
    assert results["similarity"]["looped"] is False
    signs = {row["sign"]: row for row in results["signs"]}
    assert signs["gradient in the heads' outputs"]["found"] is True
    assert signs["the iterate's attention scores follow the residuals (von Oswald et al.)"][
        "found"] is True
    text = report(results)
    assert text.rstrip().splitlines()[-1].startswith("| the blocks compute one repeated step")


def test_deep_stacks_are_probed_at_log_spaced_layers_and_run_at_most_16_layers_past_it():
    assert default_layers(5) == [1, 2, 3, 4, 5]
    assert default_layers(16) == list(range(1, 17))
    assert default_layers(17) == [1, 2, 4, 8, 16, 17]
    assert default_layers(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_layers(96) == [1, 2, 4, 8, 16, 32, 64, 96]
    assert [more_steps(d) for d in (4, 5, 16, 96)] == [8, 10, 32, 112]
    assert [ood_problems(d, n) for d, n in ((5, 4096), (5, 128), (96, 4096))] == [1024, 128, 256]


def test_a_probe_of_chosen_layers_equals_those_layers_of_a_full_probe(gd_probed):
    full, chosen = gd_probed, probe(GD, problems=256, layers=[3, 1], write=False)
    assert chosen["layers"] == [1, 3] and full["layers"] == [1, 2, 3, 4]
    picked = [0, 2]  # layers 1 and 3 in the full probe's lists
    assert chosen["rows"] == [full["rows"][i] for i in picked]
    for name, entry in chosen["probes"].items():
        for site in ("input", "stream", "beyond_slots", "heads"):
            for key, values in entry[site].items():
                assert values == [full["probes"][name][site][key][i] for i in picked], (name, key)
    attention = chosen["attention"]
    assert attention["layers"] == [full["attention"]["layers"][i] for i in picked]
    assert attention["maps"]["trained"] == [full["attention"]["maps"]["trained"][i]
                                            for i in picked]
    gradient = chosen["probes"]["gradient"]["heads"]
    assert gradient["r2"][1] > 0.99 and gradient["control_r2"][1] < 0.9  # layer 3's numbers
    for measure_ in ("interchange", "updates"):  # layers 1 and 3 of the 4 x 4 matrices
        for who in ("trained", "control"):
            whole = full["similarity"][measure_][who]
            assert chosen["similarity"][measure_][who] == [[whole[i][j] for j in picked]
                                                           for i in picked]
    assert chosen["similarity"]["blocks_of_layers"] == [1, 3]
    assert chosen["counterfactual"] == full["counterfactual"]  # swap at 3, run to layer 4
    assert chosen["ood"] == full["ood"]
    signs = {row["sign"]: row for row in chosen["signs"]}
    assert "at layer 1 (untrained 0.08" in signs["gradient in the heads' outputs"]["number"]
    text = report(chosen)
    assert "Layers probed: 1, 3 of 4" in text
    table = text.split("**gradient**")[1].split("\n\n")[1].splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| 1", "| 3"]


def test_the_ood_rollout_measure_is_evaluate_stacks():
    stack = load_stack(QUICKSTART)
    _, problem, x0 = _problems(QUICKSTART, 96, seed=1011)
    traj = rollout(stack.codec.teacher, problem, x0, 7)
    mine = measure(stack, problem, traj, 7, 1.0)
    theirs = evaluate_stack(stack, problem, traj, 1.0, 7, beyond="last")
    gap = theirs["objective"]
    assert mine["gap"] == {who: gap[who]["median"] for who in ("teacher", "emulated")}
    assert mine["progress"] == theirs["progress_ratio"]["median"]
    assert mine["rollout"] == theirs["rollout"]["simplex"]["median"]
    assert mine["breakdown_depth"] == theirs["breakdown_depth"]
    assert mine["problems"] == 96 and len(mine["gap"]["emulated"]) == 8
    assert 0 < mine["gap"]["emulated"][-1] < mine["gap"]["emulated"][0]


def test_probe_a_looped_stack_says_it_has_one_block(tmp_path):
    stack = load_stack(GD)
    recipe = recipe_from_dict(read_config(GD)["recipe"])
    looped = Stack(stack.codec, stack.readio, [stack.blocks[0]], looped=True, depth=4)
    save_stack(looped, recipe, tmp_path / "looped", stage="looped")
    results = probe(tmp_path / "looped", problems=128, write=False)
    assert results["similarity"]["looped"] is True
    assert results["signs"][-1]["found"] is None


def test_cli_reports_a_bad_directory_in_one_line_and_never_writes_into_checkpoints(
    capsys, tmp_path
):
    assert main(["probe", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such checkpoint directory" in err[0]
    assert main(["probe", QUICKSTART, "--out", f"{QUICKSTART}/probes"]) == 2
    assert "is a checkpoint directory" in capsys.readouterr().err
    assert main(["probe", QUICKSTART, "--out", "checkpoints/probes"]) == 2
    assert "holds saved stacks" in capsys.readouterr().err
    for layers, why in (("0,2", "0 is not one"), ("6", "6 is not one"),
                        ("2,4,2", "2 is given twice"), ("1,x", "separated by commas")):
        assert main(["probe", QUICKSTART, "--layers", layers]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], err
    shipped = Path(QUICKSTART)
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "model.safetensors"]
    assert not (shipped.parent / "probes").exists()


@pytest.mark.slow
def test_probe_quickstart_writes_its_files(tmp_path):
    out = tmp_path / "quickstart"
    assert main(["probe", QUICKSTART, "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    figures = ("probe_scores", "attention", "counterfactual", "similarity", "ood")
    assert {"probes.json", "report.md"} | {f"{f}.{s}" for f in figures for s in ("png", "pdf")} \
        <= names
    results = json.loads((out / "probes.json").read_text())
    assert results["probes"]["centroid"]["constant_in_frame"][0]["value"] == pytest.approx(
        [0.5, 0.0], abs=1e-9)
    assert not math.isnan(results["counterfactual"]["retarget"][-1])
