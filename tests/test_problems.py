"""Objective families against independent numpy formulas; seeding, batching and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blockwise import problems, teachers
from blockwise.problems import Problem

B, M, DIM = 5, 6, 4

# Settings away from the defaults where a default would hide a mistake (Rosenbrock's default
# shift 0 makes every seed the same instance; amplitude 10 would hide a hard-coded 10).
SETTINGS = {
    "sphere": {"shift": 2.0},
    "quadratic": {"condition": 100.0},
    "rosenbrock": {"shift": 0.5},
    "rastrigin": {"amplitude": 7.0},
    "least_squares": {"n_context": 7, "noise": 0.1},
}


def _numpy_f(problem: Problem, x: np.ndarray) -> np.ndarray:
    """f written from the module docstrings, for x (B, m, n) -> (B, m), in float64."""
    p = {k: v.numpy() for k, v in problem.params.items()}
    s, family = problem.settings, problem.family
    if family == "sphere":
        return ((x - p["x_opt"][:, None]) ** 2).sum(-1)
    if family == "quadratic":
        a = np.einsum("bij,bj,bkj->bik", p["rotation"], p["eigvals"], p["rotation"])
        d = x - p["x_opt"][:, None]
        return np.einsum("bmi,bik,bmk->bm", d, a, d)
    if family == "rosenbrock":
        z = x - p["x_opt"][:, None] + 1
        return (100 * (z[..., 1:] - z[..., :-1] ** 2) ** 2 + (1 - z[..., :-1]) ** 2).sum(-1)
    if family == "rastrigin":
        z, amp = x - p["x_opt"][:, None], s["amplitude"]
        return amp * x.shape[-1] + (z**2 - amp * np.cos(2 * np.pi * z)).sum(-1)
    if family == "least_squares":
        pred = np.einsum("bmi,bni->bmn", x, p["x"])  # w.x_i for every point w and pair i
        return ((pred - p["y"][:, None]) ** 2).sum(-1) / (2 * p["x"].shape[1])
    raise AssertionError(f"no numpy reference for family {family!r}: add one to this test")


def _make(family: str, batch: int = B, dim: int = DIM, seed: int = 0) -> Problem:
    return problems.make(family, batch=batch, dim=dim, seed=seed, **SETTINGS[family])


def _points(seed: int, shape=(B, M, DIM), scale=1.5) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape) * scale)


families = pytest.mark.parametrize("family", sorted(problems.REGISTRY))


@families
def test_f_matches_numpy_formula(family):
    problem, x = _make(family), _points(1)
    f = problem(x)
    assert f.shape == (B, M) and f.dtype == torch.float64
    np.testing.assert_allclose(f.numpy(), _numpy_f(problem, x.numpy()), rtol=1e-12, atol=0)


@families
def test_float32_evaluation_is_close_to_float64(family):
    problem, x = _make(family), _points(2)
    f32 = problem(x.float())
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), problem(x), rtol=2e-5, atol=1e-5)


@families
def test_minimizer_is_a_minimum(family):
    problem = _make(family)
    x_star = problem.minimizer()
    assert x_star.shape == (B, DIM)
    f_star = problem(x_star[:, None, :])
    f_near = problem(x_star[:, None, :] + 1e-3 * _points(3))
    assert (f_near > f_star).all()
    if family != "least_squares":  # with noise, its minimum is the residual, not 0
        assert (f_star == 0).all()


@families
def test_seeding(family):
    a, b, c = _make(family, seed=7), _make(family, seed=7), _make(family, seed=8)
    assert set(a.params) == set(c.params)
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name]), name
    for row in range(B):
        assert any(not torch.equal(a.params[k][row], c.params[k][row]) for k in a.params), row
    # Instances differ from one another within a batch too.
    assert any(not torch.equal(a.params[k][0], a.params[k][1]) for k in a.params)


@families
def test_instance_does_not_depend_on_batch_size(family):
    small, large = _make(family, batch=3)[1], _make(family, batch=8)[1]
    assert small.batch_size == large.batch_size == 1
    for name in small.params:
        assert torch.equal(small.params[name], large.params[name]), name


@families
def test_gradient_matches_finite_differences(family):
    problem, x = _make(family), _points(4, scale=1.0)
    g = problems.gradient(problem, x)
    h = 1e-6
    fd = torch.empty_like(x)
    for i in range(DIM):
        e = torch.zeros(DIM, dtype=x.dtype)
        e[i] = h
        fd[..., i] = (problem(x + e) - problem(x - e)) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-6)


# ---- in-context least squares -------------------------------------------------------------


def test_least_squares_closed_form_gradient_equals_autograd():
    problem, x = _make("least_squares"), _points(5)
    closed = problem.gradient(x)
    autograd = Problem.gradient(problem, x)  # the base class differentiates f itself
    torch.testing.assert_close(closed, autograd, rtol=1e-12, atol=1e-15)


def test_least_squares_one_gd_step_from_zero():
    """von Oswald et al.: one GD step from w = 0 with rate eta is (eta/N) sum_i y_i x_i."""
    problem, eta = _make("least_squares"), 0.3
    gd = teachers.make("gradient_descent", lr=eta)
    state, _ = gd.step(problem, gd.init(problem, torch.zeros(B, DIM, dtype=torch.float64)))
    xs, ys = problem.params["x"].numpy(), problem.params["y"].numpy()
    expected = eta / xs.shape[1] * np.einsum("bn,bni->bi", ys, xs)
    np.testing.assert_allclose(state["x"].numpy(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n_context", [DIM, 3 * DIM])
def test_least_squares_without_noise_is_solved_by_w_true(n_context):
    problem = problems.make("least_squares", batch=B, dim=DIM, seed=3, n_context=n_context)
    p = problem.params
    assert p["x"].shape == (B, n_context, DIM) and p["y"].shape == (B, n_context)
    torch.testing.assert_close(p["y"], torch.einsum("bni,bi->bn", p["x"], p["w_true"]))
    torch.testing.assert_close(p["y_query"], (p["x_query"] * p["w_true"]).sum(-1))
    torch.testing.assert_close(problem.minimizer(), p["w_true"], rtol=0, atol=1e-9)
    assert problem(p["w_true"][:, None, :]).abs().max() < 1e-28


def test_least_squares_minimizer_with_noise_and_few_pairs_is_minimum_norm():
    problem = problems.make("least_squares", batch=B, dim=6, seed=4, n_context=4, noise=0.5)
    xs, ys = problem.params["x"].numpy(), problem.params["y"].numpy()
    expected = np.stack([np.linalg.pinv(xs[b]) @ ys[b] for b in range(B)])
    np.testing.assert_allclose(problem.minimizer().numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("input_range", [1.0, 3.0])
def test_least_squares_input_range(input_range):
    problem = problems.make(
        "least_squares", batch=32, dim=5, seed=2, n_context=40, input_range=input_range
    )
    x = torch.cat([problem.params["x"].flatten(), problem.params["x_query"].flatten()])
    half = input_range / 2
    assert x.abs().max() < half and x.abs().max() > 0.98 * half
    assert abs(x.mean()) < 0.05 * half  # U(-r/2, r/2): mean 0, variance r^2 / 12
    assert abs(x.var() / (input_range**2 / 12) - 1) < 0.05


def test_least_squares_w_scale():
    problem = problems.make("least_squares", batch=128, dim=8, seed=2, w_scale=2.5)
    w = problem.params["w_true"]
    assert abs(w.std() / 2.5 - 1) < 0.1 and abs(w.mean()) < 0.3


# ---- quadratic ---------------------------------------------------------------------------


def test_quadratic_rotation_is_orthogonal_and_spectrum_has_the_condition_number():
    problem = problems.make("quadratic", batch=B, dim=6, seed=1, condition=250.0)
    q = problem.params["rotation"].numpy()
    np.testing.assert_allclose(q.transpose(0, 2, 1) @ q, np.broadcast_to(np.eye(6), q.shape),
                               atol=1e-13)
    eig = np.linalg.eigvalsh(problem.hessian_half().numpy())  # ascending
    np.testing.assert_allclose(eig, np.broadcast_to(250.0 ** (np.arange(6) / 5), eig.shape),
                               rtol=1e-11)
    np.testing.assert_allclose(eig[:, -1] / eig[:, 0], 250.0, rtol=1e-11)
    assert not np.allclose(np.abs(q), np.eye(6))  # actually rotated


def test_quadratic_rotations_look_haar():
    """Haar entries have mean 0 and mean square 1/n. A QR without the sign fix is biased: its
    first column is -sign(g_11) g_1 / |g_1|, so its (1, 1) entry is never positive."""
    q = problems.make("quadratic", batch=600, dim=3, seed=9).params["rotation"]
    se = (1 / 3 / 600) ** 0.5  # standard error of each entry's mean
    assert (q.mean(0).abs() < 5 * se).all(), q.mean(0)
    torch.testing.assert_close((q**2).mean(0), torch.full((3, 3), 1 / 3, dtype=q.dtype),
                               rtol=0, atol=0.05)


def test_quadratic_without_rotation_is_the_axis_aligned_ellipsoid():
    problem = problems.make("quadratic", batch=B, dim=3, seed=1, rotate=False, condition=9.0)
    x = _points(6, shape=(B, M, 3))
    d = x - problem.params["x_opt"][:, None]
    expected = d[..., 0] ** 2 + 3 * d[..., 1] ** 2 + 9 * d[..., 2] ** 2
    torch.testing.assert_close(problem(x), expected, rtol=1e-14, atol=0)


# ---- bad input ---------------------------------------------------------------------------


def test_unknown_family_and_setting_are_named():
    with pytest.raises(ValueError, match="unknown problem family 'spere'"):
        problems.make("spere", batch=2, dim=2, seed=0)
    with pytest.raises(ValueError, match=r"sphere: unknown setting\(s\) \['radius'\]"):
        problems.make("sphere", batch=2, dim=2, seed=0, radius=1.0)


@pytest.mark.parametrize(
    "family, setting, value",
    [
        ("sphere", "shift", -1.0),
        ("sphere", "shift", float("inf")),
        ("quadratic", "condition", 0.5),
        ("quadratic", "condition", float("nan")),
        ("quadratic", "condition", float("inf")),
        ("quadratic", "shift", "1"),
        ("quadratic", "rotate", "no"),
        ("rosenbrock", "shift", -0.1),
        ("rastrigin", "amplitude", -1.0),
        ("rastrigin", "shift", None),
        ("least_squares", "n_context", 0),
        ("least_squares", "n_context", 2.5),
        ("least_squares", "n_context", True),
        ("least_squares", "input_range", -1.0),
        ("least_squares", "input_range", float("inf")),
        ("least_squares", "w_scale", -1.0),
        ("least_squares", "noise", -0.1),
    ],
)
def test_impossible_setting_is_named(family, setting, value):
    with pytest.raises(ValueError, match=f"{family}: {setting} must be"):
        problems.make(family, batch=2, dim=3, seed=0, **{setting: value})


@pytest.mark.parametrize(
    "family, batch, dim, match",
    [
        ("sphere", 0, 3, "batch must be"),
        ("sphere", "2", 3, "batch must be"),
        ("sphere", 2, 0, "dim must be an int >= 1"),
        ("rosenbrock", 2, 1, "dim must be an int >= 2"),
    ],
)
def test_bad_batch_or_dim_is_named(family, batch, dim, match):
    with pytest.raises(ValueError, match=f"{family}: {match}"):
        problems.make(family, batch=batch, dim=dim, seed=0)


@families
@pytest.mark.parametrize("shape", [(B, DIM), (B + 1, M, DIM), (B, M, DIM + 1), (B, M, DIM, 1)])
def test_wrong_point_shapes_are_named(family, shape):
    problem = _make(family)
    x = torch.zeros(shape, dtype=torch.float64)
    expected = rf"{family}: points must have shape \(B={B}, m, n={DIM}\), got"
    with pytest.raises(ValueError, match=expected):
        problem(x)
    with pytest.raises(ValueError, match=f"{family}: points must have shape"):
        problem.gradient(x)


@families
def test_integer_points_are_rejected(family):
    with pytest.raises(TypeError, match=f"{family}: points must be a floating-point tensor"):
        _make(family)(torch.zeros(B, M, DIM, dtype=torch.int64))
