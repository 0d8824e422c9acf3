"""problem_tokens in a frame describe g(x') = (f(c + L x') - f_shift) / f_scale exactly, with
L = s I (a scale frame) or the edge matrix E (an affine frame)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blockwise import problems
from blockwise.problems import Frame


def _frame(batch, dim, seed=0, affine=False):
    """A random scale frame, or an affine one with a random (far from singular) E."""
    g = torch.Generator().manual_seed(seed)
    frame = Frame(
        centre=torch.randn(batch, dim, generator=g, dtype=torch.float64),
        scale=torch.rand(batch, generator=g, dtype=torch.float64) + 0.1,
        f_shift=torch.randn(batch, generator=g, dtype=torch.float64),
        f_scale=torch.rand(batch, generator=g, dtype=torch.float64) + 0.1,
    )
    if not affine:
        return frame
    edges = torch.eye(dim, dtype=torch.float64) + 0.4 * torch.randn(
        batch, dim, dim, generator=g, dtype=torch.float64
    )
    return Frame(frame.centre, torch.ones(batch).double(), frame.f_shift, frame.f_scale, edges)


def _g_reference(problem, frame, xp):
    """(f(c + L x') - f_shift) / f_scale, straight from the problem's own f, in numpy's
    matrix product for L = E (independent of Frame.points_from)."""
    if frame.edges is None:
        x = frame.centre[:, None, :] + frame.scale[:, None, None] * xp
    else:
        moved = np.einsum("bij,bmj->bmi", frame.edges.numpy(), xp.numpy())
        x = frame.centre[:, None, :] + torch.from_numpy(moved)
    return (problem(x) - frame.f_shift[:, None]) / frame.f_scale[:, None]


def _g_from_tokens(family, tokens, xp, n_context=None):
    """g(x') from the tokens alone, in numpy: what a network must compute in context."""
    xp = xp.numpy()
    if family == "quadratic":
        a, x_opt, offset = (tokens[k].numpy() for k in ("A", "x_opt", "offset"))
        d = xp - x_opt
        return np.einsum("bmi,bij,bmj->bm", d, a, d) + offset[:, :, 0]
    if family == "sphere" and "A" in tokens:  # an affine frame: a quadratic's tokens
        return _g_from_tokens("quadratic", tokens, torch.from_numpy(xp))
    if family == "sphere":
        x_opt, vs = tokens["x_opt"].numpy(), tokens["value_scales"].numpy()
        return vs[:, :, 0] * ((xp - x_opt) ** 2).sum(-1) + vs[:, :, 1]
    ctx, vs = tokens["context"].numpy(), tokens["value_scales"].numpy()
    x, y = ctx[..., :-1], ctx[..., -1]
    r = np.einsum("bmd,bnd->bmn", xp, x) - y[:, None, :]
    return vs[:, :, 0] * 0.5 * (r**2).mean(-1) + vs[:, :, 1]


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("family", ["quadratic", "sphere", "least_squares"])
def test_tokens_describe_the_objective_in_the_frame(family, affine):
    problem = problems.make(family, batch=5, dim=3, seed=2)
    frame = _frame(5, 3, affine=affine)
    xp = torch.randn(5, 7, 3, dtype=torch.float64)
    tokens = problem.problem_tokens(frame)
    for name, value in tokens.items():
        assert value.ndim == 3 and value.shape[0] == 5, name
    np.testing.assert_allclose(
        _g_from_tokens(family, tokens, xp), _g_reference(problem, frame, xp).numpy(), rtol=1e-10
    )


@pytest.mark.parametrize("family", sorted(problems.REGISTRY))
def test_identity_frame_tokens_describe_f(family):
    problem = problems.make(family, batch=4, dim=3, seed=3)
    tokens = problem.problem_tokens()
    assert all(v.ndim == 3 and v.shape[0] == 4 for v in tokens.values())
    if family in ("quadratic", "sphere", "least_squares"):
        xp = torch.randn(4, 5, 3, dtype=torch.float64)
        np.testing.assert_allclose(
            _g_from_tokens(family, tokens, xp), problem(xp).numpy(), rtol=1e-10
        )
    else:
        frame = tokens["frame"][:, 0]
        assert torch.equal(frame[:, :3], torch.zeros(4, 3, dtype=torch.float64))
        assert torch.equal(frame[:, 3:], torch.tensor([[1.0, 0.0, 1.0]] * 4, dtype=torch.float64))
        assert torch.equal(tokens["x_opt"][:, 0], problem.params["x_opt"])


def test_least_squares_tokens_do_not_leak_the_answer():
    problem = problems.make("least_squares", batch=3, dim=4, seed=0)
    assert set(problem.problem_tokens()) == {"context", "value_scales"}


@pytest.mark.parametrize("family", ["rosenbrock", "rastrigin"])
def test_families_without_a_closed_form_carry_the_affine_frame(family):
    """Rosenbrock and Rastrigin have no closed form in an affine frame: their tokens are the
    raw parameters, the frame token and one token per edge v_i - v_0 (a column of E), from
    which g(x') = (f(centre + E x') - f_shift) / f_scale is recomputed here."""
    problem = problems.make(family, batch=4, dim=3, seed=3)
    frame = _frame(4, 3, seed=1, affine=True)
    tokens = problem.problem_tokens(frame)
    assert set(tokens) == {"x_opt", "frame", "edges"}
    centre, f_shift, f_scale = tokens["frame"][:, 0, :3], *tokens["frame"][:, 0, 4:].unbind(-1)
    edges = tokens["edges"]  # (B, n, n): token i is edge i
    xp = torch.randn(4, 5, 3, dtype=torch.float64)
    x = centre[:, None, :] + torch.from_numpy(np.einsum("bij,bmi->bmj", edges.numpy(), xp.numpy()))
    g = (problem(x) - f_shift[:, None]) / f_scale[:, None]
    np.testing.assert_allclose(g.numpy(), _g_reference(problem, frame, xp).numpy(), rtol=1e-12)
    assert torch.equal(tokens["x_opt"][:, 0], problem.params["x_opt"])
