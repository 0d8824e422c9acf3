"""Gradient teachers against torch.optim, bitwise at every step, and their settings checks."""

from __future__ import annotations

import pytest
import torch

from blockwise import problems, teachers

B, STEPS = 16, 120

# (teacher name, teacher settings, torch.optim class, optimizer kwargs); lr is set per objective.
CASES = {
    "gd": ("gradient_descent", {}, torch.optim.SGD, {}),
    "heavy_ball": ("momentum", {}, torch.optim.SGD, {"momentum": 0.9}),
    "damped": (
        "momentum", {"momentum": 0.8, "dampening": 0.3}, torch.optim.SGD,
        {"momentum": 0.8, "dampening": 0.3},
    ),
    "nesterov": (
        "momentum", {"nesterov": True}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True},
    ),
    "adam": ("adam", {}, torch.optim.Adam, {}),
    "adam_betas": (
        "adam", {"betas": (0.5, 0.9), "eps": 1e-6}, torch.optim.Adam,
        {"betas": (0.5, 0.9), "eps": 1e-6},
    ),
}

# torch.optim's state-dict name for each teacher field besides x.
TORCH_FIELD = {"buffer": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq"}


def _objective(family: str):
    """(problem, start radius, lr for SGD-like teachers, lr for Adam)."""
    if family == "least_squares":
        return problems.make("least_squares", batch=B, dim=10, seed=5), 2.0, 0.05, 1e-2
    # Rosenbrock's curvature near x = 1 is about 1e3, so SGD needs a small rate to stay stable.
    return problems.make("rosenbrock", batch=B, dim=6, seed=5), 0.5, 1e-4, 1e-3


def _torch_grad(objective, p):
    return problems.gradient(objective, p.detach()[:, None, :])[:, 0]


def _run_against_torch(name, settings, optim_cls, optim_kwargs, objective, x0, lr, steps=STEPS):
    """Step the teacher and torch.optim side by side, asserting bitwise equal state each step."""
    teacher = teachers.make(name, lr=lr, **settings)
    state = teacher.init(objective, x0)
    p = x0.clone()
    opt = optim_cls([p], lr=lr, foreach=False, **optim_kwargs)
    for k in range(steps):
        p.grad = _torch_grad(objective, p)
        opt.step()
        state, extras = teacher.step(objective, state)
        assert extras == {}
        assert torch.equal(state["x"], p), f"x differs at step {k + 1}"
        for field, torch_name in TORCH_FIELD.items():
            if field in state:
                assert torch.equal(state[field], opt.state[p][torch_name]), f"{field}, step {k + 1}"
        assert (state["step"] == k + 1).all() and state["step"].dtype == torch.int64
    f_ref = problems.evaluate(objective, p[:, None, :])[:, 0]
    assert torch.equal(state["f"], f_ref)
    return state


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", ["least_squares", "rosenbrock"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bitwise_equal_to_torch_optim(case, family, dtype):
    name, settings, optim_cls, optim_kwargs = CASES[case]
    problem, radius, lr_sgd, lr_adam = _objective(family)
    x0 = problem.sample_x0(seed=6, radius=radius, dtype=dtype)
    lr = lr_adam if name == "adam" else lr_sgd
    state = _run_against_torch(name, settings, optim_cls, optim_kwargs, problem, x0, lr)
    # The comparison only means something if the run stayed finite and actually optimized.
    f0 = problems.evaluate(problem, x0[:, None, :])[:, 0]
    assert torch.isfinite(state["x"]).all()
    assert (state["f"] < 0.9 * f0).all(), (f0, state["f"])


@pytest.mark.parametrize("case", ["gd", "nesterov", "adam"])
def test_plain_callable_objective(case):
    """A lambda (autograd gradient) works and still matches torch.optim bitwise."""
    name, settings, optim_cls, optim_kwargs = CASES[case]
    scale = torch.linspace(1.0, 4.0, 5, dtype=torch.float64)

    def objective(x):  # (B, m, n) -> (B, m): a separable ellipsoid with a sine ripple
        return (scale * x**2).sum(-1) + 0.1 * torch.sin(3 * x).sum(-1)

    x0 = problems.make("sphere", batch=B, dim=5, seed=1).sample_x0(seed=2)
    state = _run_against_torch(name, settings, optim_cls, optim_kwargs, objective, x0, 0.02, 100)
    assert torch.equal(state["f"], objective(state["x"][:, None, :])[:, 0])


def test_init_state_layout():
    problem = problems.make("quadratic", batch=4, dim=3, seed=0)
    x0 = problem.sample_x0(seed=1)
    f0 = problem(x0[:, None, :])[:, 0]
    expected = {"gradient_descent": set(), "momentum": {"buffer"}, "adam": {"m", "v"}}
    for name, own in expected.items():
        teacher = teachers.make(name, lr=0.1)
        state = teacher.init(problem, x0)
        assert set(state) == {"x", "f", "step"} | own == set(teacher.state_fields)
        assert torch.equal(state["x"], x0) and torch.equal(state["f"], f0)
        assert state["step"].tolist() == [0] * 4
        for field in own:
            assert torch.equal(state[field], torch.zeros_like(x0))
        assert torch.equal(teacher.incumbent(state), x0)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_problems_at_different_step_counts(name):
    """Rows of one batch at different step counts step as they would in separate batches.

    A rollout freezes diverged problems, so their counters fall behind the others'.
    """
    problem = problems.make("quadratic", batch=8, dim=3, seed=2)
    teacher = teachers.make(name, lr=0.01)
    states = [teacher.init(problem, problem.sample_x0(seed=3))]
    for _ in range(5):
        states.append(teacher.step(problem, states[-1])[0])
    early, late = states[0], states[4]
    rows = torch.tensor([True, False, False, True, True, False, True, False])
    mixed = {k: torch.where(rows.reshape((8,) + (1,) * (v.ndim - 1)), early[k], v)
             for k, v in late.items()}
    before = {k: v.clone() for k, v in mixed.items()}
    stepped, _ = teacher.step(problem, mixed)
    from_early, _ = teacher.step(problem, early)
    from_late, _ = teacher.step(problem, late)
    for field in stepped:
        assert torch.equal(stepped[field][rows], from_early[field][rows]), field
        assert torch.equal(stepped[field][~rows], from_late[field][~rows]), field
        assert torch.equal(mixed[field], before[field]), f"step mutated its input {field}"


BAD_SETTINGS = [
    ("gradient_descent", {"lr": 0.0}, "lr must be > 0"),
    ("gradient_descent", {"lr": -0.1}, "lr must be > 0"),
    ("gradient_descent", {"lr": float("nan")}, "lr must be a finite"),
    ("gradient_descent", {"lr": float("inf")}, "lr must be a finite"),
    ("gradient_descent", {"lr": "0.1"}, "lr must be a finite"),
    ("gradient_descent", {"lr": True}, "lr must be a finite"),
    ("momentum", {"lr": 0.1, "momentum": 0.0}, "momentum must be in"),
    ("momentum", {"lr": 0.1, "momentum": 1.0}, "momentum must be in"),
    ("momentum", {"lr": 0.1, "dampening": -0.1}, "dampening must be in"),
    ("momentum", {"lr": 0.1, "dampening": 1.5}, "dampening must be in"),
    ("momentum", {"lr": 0.1, "nesterov": 1}, "nesterov must be a bool"),
    ("momentum", {"lr": 0.1, "nesterov": True, "dampening": 0.1}, "dampening must be 0 when"),
    ("momentum", {"lr": -1.0}, "lr must be > 0"),
    ("adam", {"lr": 0.0}, "lr must be > 0"),
    ("adam", {"eps": 0.0}, "eps must be > 0"),
    ("adam", {"betas": (0.9,)}, "betas must be a pair"),
    ("adam", {"betas": 0.9}, "betas must be a pair"),
    ("adam", {"betas": (1.0, 0.999)}, r"betas must be in \[0, 1\)"),
    ("adam", {"betas": (0.9, -0.1)}, r"betas must be in \[0, 1\)"),
    ("adam", {"betas": (0.9, None)}, "betas must be a finite"),
    ("adam", {"momentum": 0.9}, "unknown setting"),
]


@pytest.mark.parametrize("name, settings, match", BAD_SETTINGS)
def test_bad_settings_are_named(name, settings, match):
    with pytest.raises(ValueError, match=f"{name}.*{match}"):
        teachers.make(name, **settings)


def test_settings_are_normalized():
    adam = teachers.make("adam", betas=[0.5, 0.999], lr=1)
    assert adam.settings() == {"lr": 1.0, "betas": (0.5, 0.999), "eps": 1e-8}
    assert isinstance(adam.lr, float)


def test_missing_state_field_is_named():
    problem = problems.make("sphere", batch=2, dim=2, seed=0)
    teacher = teachers.make("adam")
    state = teacher.init(problem, problem.sample_x0(seed=0))
    del state["v"]
    with pytest.raises(ValueError, match=r"adam: state lacks field\(s\) \['v'\]"):
        teacher.step(problem, state)
