"""The affine frames: Nelder–Mead's step is the same at every k there, the problem tokens
describe f in it, degenerate simplices fall back to the scale frame, the state stays float64
between layers, CMA-ES's update in its frame reads only the draws, and runs saved when
codec.frame was a bool read as they ran."""

from __future__ import annotations

import functools
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from identity_stack import identity_blocks

from blockwise import problems, rollout, teachers
from blockwise.checkpoints import load_stack, read_config
from blockwise.codec import frame as frames
from blockwise.codec import make_codec
from blockwise.config import recipe_from_dict, saved_recipe
from blockwise.model import ReadIO
from blockwise.stack import Stack
from blockwise.teachers.nelder_mead import sort_simplex

DIM = 3
SHIPPED = Path(__file__).parent.parent / "checkpoints" / "quickstart"


@functools.cache
def _trajectory(steps: int, dim: int = DIM, batch: int = 512, shift: float = 1.0):
    problem = problems.make("quadratic", batch=batch, dim=dim, seed=11, shift=shift)
    return problem, rollout("nelder_mead", problem, problem.sample_x0(seed=12), steps)


def _condition(simplex: torch.Tensor) -> np.ndarray:
    """cond(E) (B,) of the edge matrices, by numpy's SVD (independent of the codec's)."""
    edges = (simplex[:, 1:] - simplex[:, :1]).numpy()
    return np.linalg.cond(edges)


def _frame_points(n: int) -> dict[str, np.ndarray]:
    """Every point scipy's Nelder–Mead (rho 1, chi 2, psi 1/2, sigma 1/2) can put a vertex at,
    in the frame of the standard simplex 0, e_1, ..., e_n (Nelder & Mead 1965, as scipy):
    xbar = (e_1 + ... + e_{n-1}) / n, the worst vertex w = e_n."""
    eye = np.eye(n)
    xbar, w = eye[:-1].sum(0) / n, eye[-1]
    points = {"0": np.zeros(n)}
    points |= {f"e{i + 1}": eye[i] for i in range(n)}
    points |= {f"e{i + 1}/2": eye[i] / 2 for i in range(n)}
    points["xr"] = 2 * xbar - w
    points["xe"] = 3 * xbar - 2 * w
    points["xc"] = 1.5 * xbar - 0.5 * w
    points["xcc"] = 0.5 * xbar + 0.5 * w
    return points


def _named_vertices(coords: np.ndarray, points: dict[str, np.ndarray], tol: float) -> list:
    """Per row of coords (B, n+1, n): the frozenset of point names its vertices are at, or
    None where a vertex is at none of them."""
    names, table = list(points), np.stack(list(points.values()))  # (P, n)
    distance = np.abs(coords[:, :, None, :] - table[None, None]).max(-1)  # (B, n+1, P)
    nearest = distance.argmin(-1)
    hit = distance.min(-1) <= tol
    return [
        frozenset(names[j] for j in row) if ok.all() else None
        for row, ok in zip(nearest, hit, strict=True)
    ]


def test_the_teachers_next_simplex_is_the_same_affine_combination_at_every_step():
    """In the frame of the current simplex, the teacher's next vertices are one fixed set of
    points per branch, at k = 1 as at k = 40: what a block must output does not depend on k."""
    problem, traj = _trajectory(40)
    codec = make_codec("nelder_mead", problem, frame="affine")
    expected = {  # branch code -> the next simplex's vertices, named as in _frame_points
        0: {"0", "e1", "e2", "xe"},
        1: {"0", "e1", "e2", "xr"},
        2: {"0", "e1", "e2", "xr"},
        3: {"0", "e1", "e2", "xc"},
        4: {"0", "e1", "e2", "xcc"},
        5: {"0", "e1/2", "e2/2", "e3/2"},
    }
    seen = {}
    for k in (1, 40):
        now, after = traj[k - 1], traj[k]
        coords = codec.to_frame(after, codec.encode(now, problem).frame)["simplex"].numpy()
        fine = _condition(now["simplex"]) < frames.MAX_CONDITION
        assert fine.mean() > 0.95, k  # the fallback is for the rare degenerate simplex
        names = _named_vertices(coords[fine], _frame_points(DIM), tol=1e-7)
        branch = traj.extras["branch"][k - 1][torch.from_numpy(fine)].tolist()
        for b, got in zip(branch, names, strict=True):
            assert got == expected[b], (k, b, got)
        seen[k] = set(branch)
    assert {0, 2, 4} <= seen[1] | seen[40] and len(seen[40]) >= 3  # several branches checked


@pytest.mark.parametrize("family", ["quadratic", "sphere"])
@pytest.mark.parametrize("k", [1, 30])
def test_problem_tokens_in_the_frame_give_f(family, k):
    """f(v_0 + E x') == f_shift + f_scale g(x'), with g evaluated from the tokens the codec
    wrote (A' = E^T A E / f_scale, x_opt' = E^-1 (x* - v_0), offset) and E taken from the
    simplex itself."""
    problem = problems.make(family, batch=64, dim=DIM, seed=3)
    state = rollout("nelder_mead", problem, problem.sample_x0(seed=4), k)[k]
    codec = make_codec("nelder_mead", problem, frame="affine")
    enc = codec.encode(state, problem)

    def group(name):
        return enc.tokens[:, codec.positions[name], codec.slots[name]].numpy()

    a, x_opt, offset = group("A"), group("x_opt"), group("offset")[:, :, 0]
    xp = np.random.default_rng(0).uniform(-1, 2, (64, 9, DIM))
    d = xp - x_opt
    g = np.einsum("bmi,bij,bmj->bm", d, a, d) + offset
    simplex, fvals = state["simplex"].numpy(), state["fvals"].numpy()
    edges = (simplex[:, 1:] - simplex[:, :1]).transpose(0, 2, 1)
    x = simplex[:, :1] + np.einsum("bij,bmj->bmi", edges, xp)
    f = problem(torch.from_numpy(x)).numpy()
    f_shift, f_scale = fvals[:, :1], fvals[:, -1:] - fvals[:, :1]
    # x_opt' lies |x* - v_0| / |E| from the simplex, so g = O(1) is a sum of terms
    # ~|x_opt'|^2 |A'| that cancel, and an error of cond(E) eps in x_opt' grows by cond(A') =
    # cond(E)^2 along E's weakest direction: checked where cond(E) < 1000 (most rows; one at
    # 9440 holds g to 1e-4 in float64, the scale frame's tokens cancel alike).
    fine = _condition(state["simplex"]) < 1000
    assert fine.mean() > 0.8
    np.testing.assert_allclose(((f - f_shift) / f_scale)[fine], g[fine], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(f[fine], (f_shift + f_scale * g)[fine], rtol=1e-9)


def test_encode_decode_round_trip_to_float64_precision_60_steps_in():
    """At step 60 the simplex spans 1e-9 of its position: the round trip through the affine
    frame errs by a few float64 ulps of the position, far below the simplex's own size."""
    problem, traj = _trajectory(60, dim=2, batch=64, shift=1000.0)
    state = traj[60]
    simplex = state["simplex"]
    spread = (simplex - simplex[:, :1]).abs().amax((1, 2))
    position = simplex.abs().amax((1, 2))
    assert (spread < 1e-7 * position).all()  # below float32's resolution of its position
    codec = make_codec("nelder_mead", problem, frame="affine")
    enc = codec.encode(state, problem)
    decoded = codec.decode(enc.tokens, enc)
    err = (decoded["simplex"] - simplex).abs().amax((1, 2))
    assert (err <= 4 * torch.finfo(torch.float64).eps * position).all()
    f_err = (decoded["fvals"] - state["fvals"]).abs()
    assert (f_err <= 4 * torch.finfo(torch.float64).eps * state["fvals"].abs()).all()


@pytest.mark.parametrize("frame", ["scale", "affine"])
def test_a_float32_stack_keeps_the_state_in_float64(frame):
    """A float32 block between float64 encode and decode: the do-nothing stack returns s_60 to
    float32's resolution of the frame's coordinates (relative to the simplex's size), where
    casting the state itself to float32 would lose the simplex."""
    problem, traj = _trajectory(60, dim=2, batch=64, shift=1000.0)
    state = traj[60]
    codec = make_codec("nelder_mead", problem, frame=frame)
    recipe = recipe_from_dict({"steps": 1, "problem": {"family": "quadratic", "dim": 2}})
    stack = Stack(codec, ReadIO(codec.token_dim, recipe.block.width), identity_blocks(recipe))
    assert stack.readio.read_in.weight.dtype == torch.float32
    out = stack.layer(1, state, problem)
    simplex = state["simplex"]
    spread = (simplex - simplex[:, :1]).abs().amax((1, 2))
    err = (out["simplex"] - simplex).abs().amax((1, 2))
    assert out["simplex"].dtype == torch.float64
    assert (err <= 4 * torch.finfo(torch.float32).eps * spread).all()
    lost = (simplex.float().double() - simplex).abs().amax((1, 2))
    assert (lost > 0.01 * spread).any()  # the control: a float32 state does lose it


def test_degenerate_edges_fall_back_to_the_scale_frame():
    """cond(E) >= 1e4, a collapsed edge and a non-finite row get scale I; the rest keep E."""
    scale = torch.tensor([2.0, 3.0, 5.0, 7.0, 11.0], dtype=torch.float64)
    edges = torch.stack([
        torch.diag(torch.tensor([1.0, 1 / 9999.0])),  # cond 9999: kept
        torch.diag(torch.tensor([1.0, 1 / 10001.0])),  # cond 10001: falls back
        torch.tensor([[1.0, 2.0], [0.0, 0.0]]),  # two edges along one line
        torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
        torch.tensor([[0.3, -0.2], [0.1, 0.4]]),
    ]).double()
    guarded = frames.guarded_edges(edges, scale)
    with np.errstate(divide="ignore"):
        cond = [np.linalg.cond(e) if np.isfinite(e).all() else np.inf for e in edges.numpy()]
    keep = [bool(c < 1e4) for c in cond]
    assert keep == [True, False, False, False, True]
    for b, kept in enumerate(keep):
        want = edges[b] if kept else scale[b] * torch.eye(2, dtype=torch.float64)
        assert torch.equal(guarded[b], want), b


def test_a_degenerate_simplex_is_encoded_in_the_scale_frame_and_scored():
    """A batch holding a nearly collinear simplex: its row is encoded as the scale codec
    encodes it, the others in the affine frame, and every row decodes back to its state."""
    problem = problems.make("quadratic", batch=3, dim=2, seed=0)
    vertices = torch.tensor([
        [[0.2, 0.1], [0.5, 0.1], [0.2, 0.4]],  # a right triangle: cond(E) = 1
        [[0.0, 0.0], [1.0, 0.0], [2.0, 1e-5]],  # nearly collinear: cond(E) ~ 5e5
        [[-1.0, 0.5], [-0.8, 0.9], [-0.5, 0.4]],
    ], dtype=torch.float64)
    simplex, fvals = sort_simplex(vertices, problem(vertices))
    state = {"simplex": simplex, "fvals": fvals, "nfev": torch.zeros(3, dtype=torch.long),
             "done": torch.zeros(3, dtype=torch.bool)}
    affine = make_codec("nelder_mead", problem, frame="affine")
    scale = make_codec("nelder_mead", problem, frame="scale")
    enc = affine.encode(state, problem)
    coords = enc.tokens[:, affine.positions["vertex"], affine.slots["coords"]]
    standard = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(coords[[0, 2]], standard.expand(2, 3, 2), rtol=0, atol=1e-15)
    in_scale = scale.encode(state, problem)
    vertex = affine.positions["vertex"]
    assert torch.equal(enc.tokens[1, vertex], in_scale.tokens[1, vertex])
    decoded = affine.decode(enc.tokens, enc)
    torch.testing.assert_close(decoded["simplex"], simplex, rtol=0, atol=1e-15)
    assert torch.isfinite(enc.tokens).all()


# ---------------------------------------------------------------- saved before frame had a kind


@pytest.mark.parametrize(("old", "new"), [(True, "scale"), (False, "none")])
def test_a_saved_bool_frame_reads_as_the_frame_it_computed(old, new):
    saved = {"codec": {"mode": "in_context", "frame": old}}
    assert saved_recipe(saved)["codec"]["frame"] == new
    assert saved["codec"]["frame"] is old  # the caller's mapping is left alone
    assert recipe_from_dict(saved_recipe(saved)).codec.frame == new


def test_a_checkpoint_saved_with_frame_true_loads_in_the_scale_frame(tmp_path):
    # Checkpoints saved before the frame had kinds hold true (the scale frame) or false (none)
    # in both codec.frame and recipe.codec.frame.
    raw = json.loads((SHIPPED / "config.json").read_text())
    copy = Path(shutil.copytree(SHIPPED, tmp_path / "copy"))
    for codec_frame, recipe_frame in itertools.product([False, True], repeat=2):
        edited = json.loads(json.dumps(raw))
        edited["codec"]["frame"], edited["recipe"]["codec"]["frame"] = codec_frame, recipe_frame
        (copy / "config.json").write_text(json.dumps(edited))
        if codec_frame == recipe_frame:
            kind = "scale" if codec_frame else "none"
            config = read_config(copy)
            assert config["codec"]["frame"] == kind == config["recipe"]["codec"]["frame"]
            assert load_stack(copy).codec.frame == kind
        else:  # a checkpoint whose two fields disagree is still refused
            with pytest.raises(ValueError, match="recipe.codec.frame"):
                read_config(copy)


def test_a_recipe_asking_a_gradient_teacher_for_the_affine_frame_is_refused_by_name():
    with pytest.raises(ValueError, match="gradient_descent codec: no 'affine' frame"):
        gd = {"name": "gradient_descent", "settings": {"lr": 0.1}}
        recipe_from_dict({"teacher": gd, "codec": {"frame": "affine"}})
    for name in ("nelder_mead", "cma_es"):
        recipe = {"teacher": {"name": name}, "codec": {"frame": "affine"}}
        assert recipe_from_dict(recipe).codec.frame == "affine"


@pytest.mark.parametrize("k", [1, 6])
def test_cma_es_in_its_affine_frame_is_the_update_with_c_equal_to_i_on_the_draws(k):
    """In the frame L = sigma C^1/2 the candidates are the draws z_k = C^-1/2 (x_k - m) / sigma
    and the teacher's next mean, p_sigma, p_c and C are eqs. (41)-(47) with C = I on them,
    recomputed here in numpy float64 from the candidates, their f and the previous state."""
    n = 4
    problem = problems.make("quadratic", batch=64, dim=n, seed=5, condition=10.0)
    teacher = teachers.make("cma_es", sigma0=0.5, sampler="mirrored")
    traj = rollout(teacher, problem, problem.sample_x0(seed=6), k)
    codec = make_codec(teacher, problem, mode="oracle", frame="affine")
    now, after = traj[k - 1], traj[k]
    enc = codec.encode(now, problem)
    got = codec.to_frame(after, enc.frame)
    tokens = enc.tokens[:, codec.positions["candidate"]]
    p = teacher.params(n)
    w = np.array(p.weights)
    for b in range(8):
        x = traj.extras["candidates"][k - 1][b].numpy()  # (lambda, n)
        f = traj.extras["fvals"][k - 1][b].numpy()
        m, sigma = now["mean"][b].numpy(), now["sigma"][b].item()
        values, basis = np.linalg.eigh(now["C"][b].numpy())
        inv_root = basis @ np.diag(values**-0.5) @ basis.T
        z = (x - m) / sigma @ inv_root  # (lambda, n), inv_root is symmetric
        order = np.argsort(f, kind="stable")
        np.testing.assert_allclose(tokens[b, :, codec.slots["coords"]].numpy(), z, atol=1e-9)
        ranks = tokens[b, order, codec.slots["rank"]].numpy()
        np.testing.assert_array_equal(ranks, np.eye(p.popsize))
        zs = z[order]
        shift = w[: p.mu] @ zs[: p.mu]
        np.testing.assert_allclose(got["mean"][b].numpy(), shift, atol=1e-9)
        h = float(traj.extras["h_sigma"][k - 1][b])
        p_c = (1 - p.cc) * inv_root @ now["p_c"][b].numpy()
        p_c = p_c + h * np.sqrt(p.cc * (2 - p.cc) * p.mueff) * shift
        np.testing.assert_allclose(got["p_c"][b].numpy(), p_c, atol=1e-9)
        w_circ = np.where(w < 0, w * n / (np.linalg.norm(zs, axis=1) + 1e-9) ** 2, w)
        c1a = p.c1 * (1 - (1 - h) * p.cc * (2 - p.cc))
        C = (1 - c1a - p.cmu * w.sum()) * np.eye(n) + p.c1 * np.outer(p_c, p_c)
        C = C + p.cmu * (zs.T * w_circ) @ zs
        np.testing.assert_allclose(got["C"][b].numpy(), C, atol=1e-9)
        p_sigma = (1 - p.cs) * now["p_sigma"][b].numpy()  # already whitened: no C^-1/2 here
        p_sigma = p_sigma + np.sqrt(p.cs * (2 - p.cs) * p.mueff) * shift
        np.testing.assert_allclose(got["p_sigma"][b].numpy(), p_sigma, atol=1e-9)


def test_a_degenerate_covariance_is_encoded_in_the_scale_frame_and_round_trips():
    """A C whose root has cond >= 1e4 (here cond(C) = 1e10) gets sigma I as its frame's map, in
    its row alone, and every row decodes back to its state."""
    n = 4
    problem = problems.make("quadratic", batch=3, dim=n, seed=5, condition=10.0)
    teacher = teachers.make("cma_es", sigma0=0.5, sampler="mirrored")
    state = rollout(teacher, problem, problem.sample_x0(seed=6), 2)[2]
    state["C"] = state["C"].clone()
    state["C"][1] = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1e-10], dtype=torch.float64))
    codec = make_codec(teacher, problem, mode="oracle", frame="affine")
    enc = codec.encode(state, problem)
    sigma = state["sigma"][:, None, None]
    fallback = torch.linalg.matrix_norm(enc.frame.edges - sigma * torch.eye(n), dim=(1, 2)) == 0
    assert fallback.tolist() == [False, True, False]
    torch.testing.assert_close(enc.frame.edges[0] @ enc.frame.edges[0].mT / sigma[0] ** 2,
                               state["C"][0])  # the others' map is sigma C^1/2
    decoded = codec.decode(enc.tokens, enc)
    for name in codec.learned_fields:
        torch.testing.assert_close(decoded[name], state[name], rtol=1e-5, atol=1e-6)
