"""Codecs: round trips, frames, batching, slot contents, oracle values, bookkeeping, bad input."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import TEST_SETTINGS

import blockwise
from blockwise import codec, problems, teachers
from blockwise.codec import MODES, make_codec
from blockwise.codec import frame as frames
from blockwise.problems import Frame
from blockwise.teachers.nelder_mead import initial_simplex

BATCH, DIM, STEPS, K = 4, 3, 6, 4  # states s_0 .. s_6 of 4 problems in 3-D; most tests use s_4
FRAMES = frames.KINDS
FAMILIES = ("quadratic", "least_squares", "rosenbrock")
SETTINGS = {"least_squares": {"n_context": 5}}
# The simplex teachers, with parallel NM moving P = 2 vertices under both of its rule sets.
SIMPLEX = {
    "nelder_mead": teachers.make("nelder_mead"),
    "parallel_scipy": teachers.make("parallel_nelder_mead", parallelism=2),
    "parallel_paper": teachers.make("parallel_nelder_mead", parallelism=2, rules="paper"),
}


@functools.cache
def _rollout(teacher, family, dtype):
    problem = problems.make(family, batch=BATCH, dim=DIM, seed=5, **SETTINGS.get(family, {}))
    x0 = problem.sample_x0(seed=6, dtype=dtype)
    return problem, blockwise.rollout(teacher, problem, x0, STEPS)


def _rounding(a, b, dtype):
    """|a - b| within a few ulps of the larger magnitude involved."""
    tol = 16 * torch.finfo(dtype).eps * max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


def _random_frame(like, seed=0, affine=False):
    """A scale frame, or an affine one whose edge matrix is I + uniform(-0.5, 0.5) noise."""
    g = torch.Generator().manual_seed(seed)
    batch, n = like.shape[0], DIM

    def draw(*shape, low=0.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) + low).to(like)

    centre, f_shift = draw(batch, n) - 0.5, draw(batch) - 0.5
    scale, f_scale = draw(batch, low=0.1), draw(batch, low=0.1)
    if not affine:
        return Frame(centre, scale, f_shift, f_scale)
    edges = torch.eye(n).to(like) + draw(batch, n, n) - 0.5
    return Frame(centre, torch.ones_like(scale), f_shift, f_scale, edges)


def test_registry_covers_every_teacher():
    assert set(codec.REGISTRY) == set(teachers.REGISTRY)


# ---------------------------------------------------------------- round trips and frames


def _skip_unless_served(teacher, frame):
    if frame not in codec.REGISTRY[teacher.name].frame_kinds:
        pytest.skip(f"{teacher.name} has no {frame} frame (see test_affine_is_for_the_affine_*)")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_identity_tokens_decode_to_the_input_state(teacher, family, mode, frame, dtype):
    _skip_unless_served(teacher, frame)
    problem, traj = _rollout(teacher, family, dtype)
    state = traj[K]
    c = make_codec(teacher, problem, mode, frame)
    enc = c.encode(state, problem)
    assert enc.tokens.shape == (BATCH, c.num_tokens, c.token_dim)
    assert enc.tokens.dtype == dtype
    read, expected = c.read(enc.tokens), c.to_frame(state, enc.frame)
    assert set(read) == set(c.learned_fields)
    for name in c.learned_fields:
        assert torch.equal(read[name], expected[name]), name
    decoded = c.decode(enc.tokens, enc)
    assert list(decoded) == list(teacher.state_fields)
    for name in c.learned_fields:
        if frame != "none":
            _rounding(decoded[name], state[name], dtype)
        else:  # the identity frame changes nothing, not even the last bit
            assert torch.equal(decoded[name], state[name]), name


@pytest.mark.parametrize("affine", [False, True])
def test_to_frame_and_from_frame_are_inverse(teacher, affine):
    _skip_unless_served(teacher, "affine" if affine else "scale")
    problem, traj = _rollout(teacher, "quadratic", torch.float64)
    state = traj[K]
    c = make_codec(teacher, problem)
    frame = _random_frame(state[c.learned_fields[0]], affine=affine)
    there = c.to_frame(state, frame)
    back = c.from_frame(there, frame)
    again = c.to_frame({**state, **back}, frame)
    for name in c.learned_fields:
        _rounding(back[name], state[name], torch.float64)
        _rounding(again[name], there[name], torch.float64)


def test_decode_is_differentiable(teacher):
    problem, traj = _rollout(teacher, "quadratic", torch.float64)
    c = make_codec(teacher, problem)
    enc = c.encode(traj[K], problem)
    tokens = enc.tokens.clone().requires_grad_(True)
    decoded = c.decode(tokens, enc)
    sum(decoded[name].sum() for name in c.learned_fields).backward()
    assert tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_rows_one_by_one(teacher, mode):
    problem, traj = _rollout(teacher, "least_squares", torch.float64)
    state = traj[K]
    c = make_codec(teacher, problem, mode)
    enc = c.encode(state, problem)
    for b in range(BATCH):
        row = c.encode({k: v[b : b + 1] for k, v in state.items()}, problem[b])
        torch.testing.assert_close(row.tokens[0], enc.tokens[b], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(row.frame.centre[0], enc.frame.centre[b], rtol=0, atol=0)


# ---------------------------------------------------------------- what the slots hold


@pytest.mark.parametrize("mode", MODES)
def test_every_token_has_one_type_flag_a_one_and_only_its_own_slots(teacher, mode):
    problem, traj = _rollout(teacher, "least_squares", torch.float64)
    c = make_codec(teacher, problem, mode)
    tokens = c.encode(traj[K], problem).tokens
    assert torch.equal(tokens[..., c.slots["one"]], torch.ones(BATCH, c.num_tokens, 1).double())
    flags = tokens[..., c.slots["type"]]
    assert torch.equal(flags.sum(-1), torch.ones(BATCH, c.num_tokens).double())
    for flag, segment in enumerate(c.layout.segments):
        rows = tokens[:, c.positions[segment.kind]]
        assert (rows[..., c.slots["type"].start + flag] == 1).all(), segment.kind
        allowed = {"type", "one", *segment.slots} | ({"index"} if segment.index else set())
        for name, where in c.slots.items():
            if name not in allowed:
                assert not rows[..., where].any(), (segment.kind, name)
    assert set(c.describe().split()) >= set(c.slots) | set(c.positions) | set(c.learned_fields)


@pytest.mark.parametrize("frame", FRAMES)
def test_nelder_mead_vertex_tokens(frame):
    teacher = teachers.make("nelder_mead")
    problem, traj = _rollout(teacher, "quadratic", torch.float64)
    simplex, f = traj[K]["simplex"], traj[K]["fvals"]
    c = make_codec(teacher, problem, "in_context", frame)
    enc = c.encode(traj[K], problem)
    vertices = enc.tokens[:, c.positions["vertex"]]
    if frame != "none":  # f from 0 (best) to 1 (worst)
        f = (f - f[:, :1]) / (f[:, -1:] - f[:, :1])
    if frame == "scale":  # best vertex at 0, inf-norm spread 1
        offsets = simplex - simplex[:, :1]
        simplex = offsets / offsets.abs().amax(dim=(1, 2))[:, None, None]
    if frame == "affine":  # the standard simplex 0, e_1, ..., e_n, to rounding
        standard = torch.cat([torch.zeros(1, DIM), torch.eye(DIM)]).double().expand_as(simplex)
        _rounding(vertices[..., c.slots["coords"]], standard, torch.float64)
    else:
        assert torch.equal(vertices[..., c.slots["coords"]], simplex)
    torch.testing.assert_close(vertices[..., c.slots["f"]][..., 0], f, rtol=0, atol=1e-15)
    ranks = torch.eye(DIM + 1, dtype=torch.float64).expand(BATCH, -1, -1)
    assert torch.equal(vertices[..., c.slots["index"]], ranks)
    # the problem tokens describe f in the same frame
    a = problem.problem_tokens(enc.frame)["A"]
    assert torch.equal(enc.tokens[:, c.positions["A"], c.slots["A"]], a)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("framed", [True, False])
def test_cma_tokens(framed, mode):
    teacher = teachers.make("cma_es")
    problem, traj = _rollout(teacher, "quadratic", torch.float64)
    state = traj[K]
    c = make_codec(teacher, problem, mode, "scale" if framed else "none")
    tokens = c.encode(state, problem).tokens

    def at(kind, slot):
        return tokens[:, c.positions[kind], c.slots[slot]]

    assert torch.equal(at("C_row", "C"), state["C"])
    assert torch.equal(at("C_row", "index"), torch.eye(DIM).double().expand(BATCH, DIM, DIM))
    assert torch.equal(at("p_sigma", "p_sigma")[:, 0], state["p_sigma"])
    assert torch.equal(at("p_c", "p_c")[:, 0], state["p_c"])
    assert torch.equal(at("p_sigma", "generation")[:, 0, 0], state["generation"].double())
    x, f = traj.extras["candidates"][K], traj.extras["fvals"][K]  # what the step sampled
    mean, sigma = state["mean"], state["sigma"]
    if framed:
        x = (x - mean[:, None]) / sigma[:, None, None]
        f = (f - f.amin(1, keepdim=True)) / (f.amax(1, keepdim=True) - f.amin(1, keepdim=True))
        mean, sigma = torch.zeros_like(mean), torch.ones_like(sigma)
    torch.testing.assert_close(at("candidate", "coords"), x, rtol=1e-14, atol=1e-14)
    assert torch.equal(at("mean", "coords")[:, 0], mean)
    assert torch.equal(at("sigma", "sigma")[:, 0, 0], sigma)
    if mode == "oracle":  # the oracle's f, and nothing else of the problem
        torch.testing.assert_close(at("candidate", "f")[..., 0], f, rtol=1e-14, atol=1e-14)
        assert set(c.positions) == {"mean", "sigma", "p_sigma", "p_c", "C_row", "candidate"}
    else:  # in context the network must evaluate f itself
        assert "f" not in c.slots


@pytest.mark.parametrize("name", ["gradient_descent", "momentum", "adam"])
@pytest.mark.parametrize("mode", MODES)
def test_gradient_tokens_on_least_squares(name, mode):
    teacher = teachers.make(name, **TEST_SETTINGS[name])
    problem, traj = _rollout(teacher, "least_squares", torch.float64)
    state = traj[K]
    c = make_codec(teacher, problem, mode)
    tokens = c.encode(state, problem).tokens
    x_ctx, y_ctx, w = problem.params["x"], problem.params["y"], state["x"]
    # in the frame centred at w the labels become residuals, y_i - w.x_i
    context = torch.cat([x_ctx, (y_ctx - (x_ctx * w[:, None]).sum(-1))[..., None]], -1)
    torch.testing.assert_close(
        tokens[:, c.positions["context"], c.slots["context"]], context, rtol=0, atol=1e-15
    )
    value_scales = tokens[:, c.positions["value_scales"], c.slots["value_scales"]][:, 0]
    assert torch.equal(value_scales, torch.stack([torch.ones(BATCH).double(), -state["f"]], -1))
    iterate = tokens[:, c.positions["iterate"]]
    assert not iterate[..., c.slots["coords"]].any()
    assert "f" not in c.slots  # f is bookkeeping: the step never reads it
    for buffer in set(teacher.state_fields) - {"x", "f", "step"}:
        assert torch.equal(tokens[:, c.positions[buffer], c.slots[buffer]][:, 0], state[buffer])
    if name != "gradient_descent":
        assert torch.equal(iterate[:, 0, c.slots["step"]][:, 0], state["step"].double())
    if mode == "oracle":
        residual = (x_ctx * w[:, None]).sum(-1) - y_ctx  # (B, N)
        grad = (residual[..., None] * x_ctx).mean(1)
        got = tokens[:, c.positions["gradient"], c.slots["grad"]][:, 0]
        torch.testing.assert_close(got, grad, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------- oracle mode


def _trap(x0):
    """An objective whose only good points are the vertices of scipy's initial simplex around
    x0: every trial point and contraction fails, so NM must shrink. f(v_i) = i."""
    vertices = initial_simplex(x0)  # (B, n+1, n)

    def f(x):
        d2 = ((x[:, :, None] - vertices[:, None]) ** 2).sum(-1)  # (B, m, n+1)
        nearest = d2.min(-1)
        return 1e8 * nearest.values + nearest.indices.to(x.dtype)

    return f


@pytest.mark.parametrize("frame", ["scale", "affine"])
@pytest.mark.parametrize("variant", sorted(SIMPLEX))
@pytest.mark.parametrize("family", ["quadratic", "rosenbrock", "trap"])
def test_oracle_next_simplex_is_a_selection_of_tokens_with_true_f(variant, family, frame):
    teacher = SIMPLEX[variant]
    if family == "trap":
        x0 = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
        objective = _trap(x0)  # a plain callable: oracle mode takes one
        states = [teacher.init(objective, x0)]
        model = problems.make("sphere", batch=2, dim=DIM, seed=0)  # for make_codec's n only
    else:
        model, traj = _rollout(teacher, family, torch.float64)
        objective = model
        states = [traj[k] for k in range(STEPS)]
    c = make_codec(teacher, model, "oracle", frame)
    branches = []
    for state in states:
        enc = c.encode(state, objective)
        points = frames.points_from(enc.frame, enc.tokens[..., c.slots["coords"]])
        f = frames.values_from(enc.frame, enc.tokens[..., c.slots["f"]][..., 0])
        _rounding(f, objective(points), torch.float64)  # every token's f is f at its point
        new, extras = teacher.step(objective, state)
        branches.append(extras["branch"].reshape(-1))
        # each next vertex and its f are some token's, to rounding
        match = (new["simplex"][:, :, None] - points[:, None]).abs().amax(-1) <= 1e-12
        match &= (new["fvals"][:, :, None] - f[:, None]).abs() <= 1e-12 * (1 + f.abs()[:, None])
        assert match.any(-1).all()
    if family == "trap":
        assert (torch.cat(branches) == 5).all()


def test_oracle_mode_takes_a_plain_callable_for_nelder_mead_and_cma():
    x0 = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    sphere = problems.make("sphere", batch=1, dim=DIM, seed=0)
    for name in ("nelder_mead", "cma_es"):
        teacher = teachers.make(name)
        c = make_codec(teacher, sphere, "oracle")
        state = teacher.init(sphere, x0)
        via_callable = c.encode(state, lambda x: sphere(x)).tokens
        assert torch.equal(via_callable, c.encode(state, sphere).tokens)


# ---------------------------------------------------------------- real rollouts


@pytest.mark.parametrize("mode", MODES)
def test_rollout_states_decode_with_the_next_steps_bookkeeping(teacher, mode):
    problem, traj = _rollout(teacher, "quadratic", torch.float64)
    c = make_codec(teacher, problem, mode)
    for k in range(STEPS):
        now, after = traj[k], traj[k + 1]
        enc = c.encode(now, problem)
        stay = c.decode(enc.tokens, enc)  # the do-nothing block
        # a perfect block: the next state's learned fields where read finds them
        move = c.decode(c.write(enc.tokens, c.to_frame(after, enc.frame)), enc)
        for name in teacher.state_fields:
            if name in c.learned_fields:
                _rounding(move[name], after[name], torch.float64)
            elif name in ("nfev", "done"):  # NM: carried, not emulated
                assert torch.equal(move[name], now[name]) and torch.equal(stay[name], now[name])
            elif name == "f":  # GD: evaluated at the decoded iterate, never read from a block
                _rounding(move[name], after[name], torch.float64)
                _rounding(stay[name], now[name], torch.float64)
            else:  # counters advance, keys stay
                assert torch.equal(move[name], after[name]) and torch.equal(stay[name], after[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_equals_cpu(teacher, mode):
    problem, traj = _rollout(teacher, "least_squares", torch.float64)
    c = make_codec(teacher, problem, mode)
    cpu = c.encode(traj[K], problem)
    gpu = c.encode({k: v.cuda() for k, v in traj[K].items()}, problem)
    assert gpu.tokens.is_cuda
    torch.testing.assert_close(gpu.tokens.cpu(), cpu.tokens, rtol=1e-12, atol=1e-13)
    decoded = c.decode(gpu.tokens, gpu)
    for name, value in decoded.items():
        torch.testing.assert_close(
            value.cpu(), c.decode(cpu.tokens, cpu)[name], rtol=1e-12, atol=1e-13
        )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["gradient_descent", "momentum", "adam"])
def test_affine_is_for_the_affine_invariant_optimizers(name):
    """The simplex codecs and CMA-ES take the affine frame; the gradient ones refuse it by name."""
    quadratic = problems.make("quadratic", batch=2, dim=DIM, seed=0)
    teacher = teachers.make(name, **TEST_SETTINGS.get(name, {}))
    with pytest.raises(ValueError, match=f"{name} codec: no 'affine' frame.*cma_es"):
        make_codec(teacher, quadratic, frame="affine")
    for variant in [*SIMPLEX.values(), teachers.make("cma_es")]:
        assert make_codec(variant, quadratic, frame="affine").frame == "affine"


def test_bad_input_is_named():
    quadratic = problems.make("quadratic", batch=2, dim=DIM, seed=0)
    nm = teachers.make("nelder_mead")
    state = nm.init(quadratic, quadratic.sample_x0(seed=1))
    with pytest.raises(ValueError, match="no codec for teacher 'bfgs'"):
        make_codec("bfgs", quadratic)
    with pytest.raises(TypeError, match="teacher must be"):
        make_codec(3, quadratic)
    with pytest.raises(ValueError, match="unknown mode 'oracular'"):
        make_codec(nm, quadratic, mode="oracular")
    with pytest.raises(ValueError, match=r"frame must be one of \('none', 'scale', 'affine'\)"):
        make_codec(nm, quadratic, frame=True)
    with pytest.raises(TypeError, match="problem must be a blockwise Problem"):
        make_codec(nm, lambda x: (x**2).sum(-1))
    c = make_codec(nm, quadratic)
    with pytest.raises(TypeError, match="'in_context' needs a blockwise Problem"):
        c.encode(state, lambda x: (x**2).sum(-1))
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['fvals'\]"):
        c.encode({k: v for k, v in state.items() if k != "fvals"}, quadratic)
    with pytest.raises(ValueError, match="field 'simplex' must be a floating tensor of shape"):
        c.encode({**state, "simplex": state["simplex"][:, :, :2]}, quadratic)
    with pytest.raises(ValueError, match="field 'fvals'.*float32"):
        c.encode({**state, "fvals": state["fvals"].float()}, quadratic)
    with pytest.raises(ValueError, match=r"state\['nfev'\] must have shape"):
        c.encode({**state, "nfev": state["nfev"][:1]}, quadratic)
    with pytest.raises(ValueError, match="built for family 'quadratic'"):
        c.encode(state, problems.make("sphere", batch=2, dim=DIM, seed=0))
    with pytest.raises(ValueError, match="3 instances, the state 2"):
        c.encode(state, problems.make("quadratic", batch=3, dim=DIM, seed=0))
    with pytest.raises(ValueError, match="tokens must have shape"):
        c.read(torch.zeros(2, c.num_tokens + 1, c.token_dim))
    with pytest.raises(ValueError, match="missing field"):
        c.from_frame({"simplex": state["simplex"]}, frames.identity(2, DIM, state["fvals"]))
    ls = problems.make("least_squares", batch=2, dim=DIM, seed=0, n_context=4)
    other = problems.make("least_squares", batch=2, dim=DIM, seed=0, n_context=5)
    with pytest.raises(ValueError, match="n_context"):
        make_codec(nm, ls).encode(nm.init(other, other.sample_x0(seed=1)), other)
    gd = teachers.make("gradient_descent", lr=0.1)
    with pytest.raises(TypeError, match="'oracle' needs a blockwise Problem"):
        make_codec(gd, quadratic, "oracle").encode(
            gd.init(quadratic, state["simplex"][:, 0]), lambda x: (x**2).sum(-1)
        )
    with pytest.raises(ValueError, match="parallelism must be <= n = 3"):
        make_codec(teachers.make("parallel_nelder_mead", parallelism=4), quadratic)
    with pytest.raises(ValueError, match="'lr'"):
        make_codec("gradient_descent", quadratic)


def test_simplex_decode_sorts_an_emulated_simplex_by_its_f_values():
    """A block's output vertices need not be best first; the decoded state must be, as the
    teacher's is, since the next layer's frame and rank slots assume it."""
    from blockwise import rollout

    problem = problems.make("quadratic", batch=6, dim=2, seed=3)
    codec = make_codec(teachers.make("nelder_mead"), problem)
    state = rollout("nelder_mead", problem, problem.sample_x0(seed=4), steps=2)[2]
    enc = codec.encode(state, problem)
    flipped = codec.write(
        enc.tokens,
        {
            "simplex": codec.to_frame(state, enc.frame)["simplex"].flip(1),
            "fvals": codec.to_frame(state, enc.frame)["fvals"].flip(1),
        },
    )
    decoded = codec.decode(flipped, enc)
    torch.testing.assert_close(decoded["simplex"], state["simplex"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decoded["fvals"], state["fvals"], rtol=1e-12, atol=1e-12)
