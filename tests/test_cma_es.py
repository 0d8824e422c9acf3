"""The cma_es teacher against pycma 4.5.0 and a numpy transcription of Hansen's tutorial.

pycma checks follow docs teachers.md §3.6: both sides get pycma's own ask() points, the
pre-tell state is read after ask, and f has no ties. Errors are max |teacher - ref| / max |ref|
per field; the tolerance 1e-10 leaves three orders of magnitude above what is observed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import tutorial_ref
from cma.utilities.math import Mh
from pycma_ref import last_hsig, make_es, snapshot, stack

import blockwise
from blockwise import problems, random, teachers
from blockwise.teachers.cma_es import CMAES
from blockwise.teachers.cma_params import cma_params, default_popsize, exact_chi
from blockwise.teachers.sampling import sobol_points, standard_normals

FIELDS = ("mean", "sigma", "C", "p_sigma", "p_c")
RTOL = 1e-10


def rel_err(value: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    """max |value - ref| / max |ref|."""
    value = value.numpy() if isinstance(value, torch.Tensor) else value
    return float(np.max(np.abs(value - ref)) / max(np.max(np.abs(ref)), 1e-300))


def _problem(family: str, batch: int, n: int, seed: int):
    """Minima at the origin (quadratic) or near 1 (Rosenbrock, runs too short to get close).

    While |m| >> sigma, (x - m) / sigma loses digits: a free run's rounding-level difference
    in m becomes a |m| / sigma times larger one in the next update. With the minimum at 0 the
    mean shrinks along with sigma.
    """
    settings = {"condition": 1e3, "shift": 0.0} if family == "quadratic" else {"shift": 0.5}
    return problems.make(family, batch=batch, dim=n, seed=seed, **settings)


# ---------------------------------------------------------------- static parameters


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 20, 40, 150])
@pytest.mark.parametrize("popsize", [None, 2, 3, 9, 40])
@pytest.mark.parametrize("active", [True, False])
def test_static_parameters_equal_pycma(n, popsize, active):
    es = make_es(np.zeros(n), 1.0, seed=1, popsize=popsize, active=active)
    p = cma_params(n, popsize, "pycma", active)
    sm = es.sm.parameters()
    assert (p.popsize, p.mu) == (es.sp.popsize, es.sp.weights.mu)
    ref = {
        "weights": np.array(es.sp.weights), "mueff": es.sp.weights.mueff, "cc": es.sp.cc,
        "c1": sm["c1"], "cmu": sm["cmu"], "cs": es.adapt_sigma.cs,
        "damps": es.adapt_sigma.damps, "chi_n": Mh.chiN(n),
    }
    for name, value in ref.items():
        assert rel_err(np.array(getattr(p, name)), np.array(value)) <= 1e-14, name


def test_exact_chi_equals_pycma_table_and_gamma_formula():
    for n in range(1, 101):
        assert abs(exact_chi(n) / Mh.chiN(n) - 1) <= 1e-15, n
    n = 7
    gamma_form = math.sqrt(2) * math.gamma((n + 1) / 2) / math.gamma(n / 2)
    assert abs(exact_chi(n) / gamma_form - 1) <= 1e-15


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 40])
@pytest.mark.parametrize("popsize", [None, 2, 3, 11, 50])
@pytest.mark.parametrize("active", [True, False])
def test_tutorial_parameters_equal_reference(n, popsize, active):
    p = cma_params(n, popsize, "tutorial", active)
    ref = tutorial_ref.params(n, p.popsize, active)
    assert p.popsize == (4 + math.floor(3 * math.log(n)) if popsize is None else popsize)
    assert p.mu == ref["mu"]
    for name in ("weights", "mueff", "cc", "c1", "cmu", "cs", "damps", "chi_n"):
        assert rel_err(np.array(getattr(p, name)), np.array(ref[name])) <= 1e-14, name


def test_parameter_table_of_teachers_md():
    """The printed table of teachers.md §3.2, n = 10: pycma and tutorial values differ."""
    p, t = cma_params(10, None, "pycma", True), cma_params(10, None, "tutorial", True)
    assert (p.popsize, p.mu, default_popsize(10)) == (10, 5, 10)
    expected = {"cs": 0.3196, "damps": 1.3196, "cc": 0.2950, "c1": 0.01528, "cmu": 0.02355}
    for name, value in expected.items():
        assert getattr(p, name) == pytest.approx(value, abs=1e-4), name
    assert (t.cs, t.damps, t.cmu) == pytest.approx((0.2844, 1.2844, 0.02015), abs=1e-4)


# ---------------------------------------------------------------- pycma, step by step


def _against_pycma(n, popsize, active, family, steps, batch=3):
    """Worst teacher-forced and free-running errors over `steps` generations of `batch` pycma
    ESs, and how often h_sigma was False (the stalls the check should see)."""
    problem = _problem(family, batch, n, seed=n)
    x0 = problem.sample_x0(seed=100 + n)
    sigma0 = 0.3
    teacher = CMAES(sigma0=sigma0, popsize=popsize, flavour="pycma", active=active)
    ess = [make_es(x0[b].numpy(), sigma0, 1000 * n + b, popsize, active) for b in range(batch)]
    init = teacher.init(problem, x0)
    assert rel_err(init["C"], np.stack([es.sm.C for es in ess])) <= 1e-15
    key = init["key"]
    worst = {("forced", f): 0.0 for f in FIELDS} | {("free", f): 0.0 for f in FIELDS}
    free, stalls = None, 0
    for _ in range(steps):
        X = torch.from_numpy(np.stack([np.array(es.ask()) for es in ess]))  # (B, lambda, n)
        pre = stack([snapshot(es) for es in ess], key)
        free = pre if free is None else free  # free run starts from es's state after ask
        f = problem(X)
        for row in f:
            assert len(set(row.tolist())) == row.shape[0], "ties in f"
        for es, xb, fb in zip(ess, X.numpy(), f.numpy(), strict=True):
            es.tell(list(xb), list(fb))
        post = [snapshot(es) for es in ess]
        hsig = torch.tensor([last_hsig(es) for es in ess])
        forced, forced_extras = teacher.step(problem, pre, candidates=X)
        free, free_extras = teacher.step(problem, free, candidates=X)
        assert torch.equal(forced_extras["h_sigma"], hsig)
        assert torch.equal(free_extras["h_sigma"], hsig)
        stalls += int((~hsig).sum())
        assert torch.equal(forced_extras["fvals"], f)
        for mode, state in (("forced", forced), ("free", free)):
            assert torch.equal(state["generation"], torch.tensor([es.countiter for es in ess]))
            for name in FIELDS:
                err = rel_err(state[name], np.stack([s[name] for s in post]))
                worst[mode, name] = max(worst[mode, name], err)
    return worst, stalls


PYCMA_CASES = [
    (2, None, True, "quadratic"),
    (3, None, True, "quadratic"),  # default lambda = 7 is odd
    (5, None, True, "rosenbrock"),
    (10, None, True, "quadratic"),
    (5, 9, True, "quadratic"),
    (5, 40, True, "quadratic"),
    (3, None, False, "quadratic"),
    (10, 13, False, "rosenbrock"),
]


@pytest.mark.parametrize("n, popsize, active, family", PYCMA_CASES)
def test_pycma_flavour_equals_pycma_step_by_step(n, popsize, active, family):
    worst, stalls = _against_pycma(n, popsize, active, family, steps=50)
    assert max(worst.values()) <= RTOL, worst
    assert stalls > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "n, popsize, active, family",
    [(20, None, True, "quadratic"), (40, None, True, "quadratic"), (5, 200, True, "quadratic"),
     (10, None, True, "rosenbrock"), (20, None, False, "rosenbrock")],
)
def test_pycma_flavour_equals_pycma_long_runs(n, popsize, active, family):
    worst, _ = _against_pycma(n, popsize, active, family, steps=150, batch=6)
    assert max(worst.values()) <= RTOL, worst


@pytest.mark.parametrize("n", [1, 2, 5, 30])
def test_init_reproduces_pycma_initial_state(n):
    x0 = torch.linspace(-1, 1, n, dtype=torch.float64)[None]
    es = make_es(x0[0].numpy(), 0.7, seed=3, popsize=None, active=True)
    state = CMAES(sigma0=0.7).init(lambda x: (x**2).sum(-1), x0)
    ref = snapshot(es)
    for name in FIELDS:
        assert rel_err(state[name][0], ref[name]) <= 1e-15, name
    assert int(state["generation"]) == es.countiter == 0
    es.ask()  # ask symmetrises the (diagonal) C: nothing changes
    assert rel_err(state["C"][0], es.sm.C) <= 1e-15
    tutorial = CMAES(flavour="tutorial").init(lambda x: (x**2).sum(-1), x0)
    assert torch.equal(tutorial["C"][0], torch.eye(n, dtype=torch.float64))


# ---------------------------------------------------------------- tutorial flavour


@pytest.mark.parametrize(
    "n, popsize, active, sampler",
    [(2, None, True, "normal"), (5, None, True, "mirrored"), (10, None, False, "sobol"),
     (5, 11, True, "normal"), (3, 3, True, "normal"), (4, 30, True, "sobol")],
)
def test_tutorial_flavour_equals_numpy_reference(n, popsize, active, sampler):
    """The teacher runs on its own; the reference gets only its candidates and f values."""
    batch, steps = 3, 60
    problem = _problem("quadratic", batch, n, seed=7 + n)
    x0 = problem.sample_x0(seed=8)
    teacher = CMAES(sigma0=0.4, popsize=popsize, flavour="tutorial", active=active, sampler=sampler)
    p = tutorial_ref.params(n, teacher.params(n).popsize, active)
    state = teacher.init(problem, x0)
    refs = [{k: v[b].numpy() for k, v in state.items() if k != "key"} for b in range(batch)]
    worst = dict.fromkeys(FIELDS, 0.0)
    flips = 0
    for _ in range(steps):
        state, extras = teacher.step(problem, state)
        for b in range(batch):
            x, f = extras["candidates"][b].numpy(), extras["fvals"][b].numpy()
            assert len(set(f.tolist())) == f.shape[0], "ties in f"
            refs[b], h = tutorial_ref.tell(p, refs[b], x, f)
            assert bool(extras["h_sigma"][b]) == h
            flips += not h
            for name in FIELDS:
                worst[name] = max(worst[name], rel_err(state[name][b], refs[b][name]))
    assert max(worst.values()) <= RTOL, worst
    sigma_fell = state["sigma"] < 0.4 * 0.5
    assert sigma_fell.all(), "the runs should have converged somewhat"


def test_tutorial_h_sigma_uses_G_equal_g():
    """At the first update (g = 1) h_sigma tests ||p_sigma|| / sqrt(1 - (1 - c_s)^2), not the
    (1 - c_s)^4 of CyberAgent's cmaes and evosax (G = g + 1). The path is placed between the
    two thresholds; candidates hug the mean so that <y>_w barely moves it."""
    n = 4
    teacher = CMAES(flavour="tutorial", popsize=6)
    p = teacher.params(n)
    state = teacher.init(lambda x: x.sum(-1), torch.zeros(1, n, dtype=torch.float64))
    limit = (1.4 + 2 / (n + 1)) * p.chi_n
    at_g = limit * math.sqrt(1 - (1 - p.cs) ** 2)
    at_g_plus_1 = limit * math.sqrt(1 - (1 - p.cs) ** 4)
    assert at_g_plus_1 - at_g > 0.4  # room for the path between the thresholds
    target = (at_g + at_g_plus_1) / 2
    direction = torch.ones(n, dtype=torch.float64) / math.sqrt(n)
    state["p_sigma"] = (target / (1 - p.cs) * direction)[None]
    candidates = 1e-9 * torch.linspace(-1, 1, 6 * n, dtype=torch.float64).reshape(1, 6, n)
    new, extras = teacher.step(lambda x: x.sum(-1), state, candidates=candidates)
    assert new["p_sigma"].norm() == pytest.approx(target, abs=1e-6)
    assert not bool(extras["h_sigma"])  # with G = g + 1 it would be True


# ---------------------------------------------------------------- sampling


def _keys(count: int) -> torch.Tensor:
    return random.fold(random.key(5), torch.arange(count))


@pytest.mark.parametrize("sampler", ["normal", "mirrored", "sobol"])
def test_same_seed_same_samples_other_seed_other_samples(sampler):
    problem = _problem("quadratic", 4, 3, seed=1)
    x0 = problem.sample_x0(seed=2)
    runs = [
        blockwise.rollout(CMAES(seed=seed, sampler=sampler), problem, x0, steps=3)
        for seed in (0, 0, 1)
    ]
    assert torch.equal(runs[0].extras["candidates"], runs[1].extras["candidates"])
    assert not torch.equal(runs[0].extras["candidates"], runs[2].extras["candidates"])
    # the design changes from generation to generation
    assert not torch.equal(runs[0].extras["candidates"][0], runs[0].extras["candidates"][1])


@pytest.mark.parametrize("popsize", [6, 7])
def test_mirrored_pairs_sum_to_zero(popsize):
    z = standard_normals("mirrored", _keys(3), torch.arange(3), popsize, 4, torch.float64)
    assert z.shape == (3, popsize, 4)
    assert torch.equal(z[:, 0 : popsize - 1 : 2], -z[:, 1:popsize:2])
    assert (z[:, 0::2].abs() > 0).all()
    # and through the teacher: x_2k + x_2k-1 = 2 m
    teacher = CMAES(sampler="mirrored", popsize=popsize, sigma0=2.0)
    state = teacher.init(lambda x: (x**2).sum(-1), torch.full((2, 4), 3.0, dtype=torch.float64))
    x = teacher.step(lambda x: (x**2).sum(-1), state)[1]["candidates"]
    pair_sum = x[:, 0 : popsize - 1 : 2] + x[:, 1:popsize:2]
    torch.testing.assert_close(pair_sum, torch.full_like(pair_sum, 6.0), rtol=0, atol=1e-13)


def test_sobol_is_deterministic_and_better_spread_than_random():
    """Each coordinate of a 2^m-point Sobol net, shifted modulo 1, has one point in every
    interval [k/lambda, (k+1)/lambda): its Kolmogorov-Smirnov distance is <= 1/lambda,
    while independent uniforms sit near 0.87/sqrt(lambda)."""
    lam, n, batch = 64, 5, 8
    keys, gens = _keys(batch), torch.arange(batch)
    z = standard_normals("sobol", keys, gens, lam, n, torch.float64)
    assert torch.equal(z, standard_normals("sobol", keys, gens, lam, n, torch.float64))
    assert torch.isfinite(z).all()
    grid = torch.arange(1, lam + 1, dtype=torch.float64)[:, None] / lam

    def ks(z):  # (B, lambda, n) -> (B, n)
        u = torch.special.ndtr(z).sort(dim=1).values
        return torch.maximum((grid - u).abs(), (u - (grid - 1 / lam)).abs()).amax(dim=1)

    normal = standard_normals("normal", keys, gens, lam, n, torch.float64)
    assert ks(z).max() <= 1 / lam + 1e-12
    assert ks(normal).mean() > 3 / lam
    assert z.mean(dim=1).abs().max() < normal.mean(dim=1).abs().mean()
    # the first Sobol point is 0; the rotation keeps it off 0 (Phi^-1(0) = -inf)
    assert torch.equal(sobol_points(4, 2)[0], torch.zeros(2, dtype=torch.float64))


def test_normal_sampler_moments():
    count, lam, n = 400, 100, 3
    z = standard_normals("normal", random.key(9).expand(count), torch.arange(count), lam, n,
                         torch.float64).reshape(-1, n)  # 40000 draws
    assert z.mean(0).abs().max() < 0.025  # 5 standard errors
    cov = torch.cov(z.T)
    assert (cov - torch.eye(n, dtype=torch.float64)).abs().max() < 0.04
    kurtosis = (z**4).mean(0)
    assert ((kurtosis - 3).abs() < 0.15).all()


def test_candidates_have_mean_m_and_covariance_sigma2_C():
    lam, sigma = 6000, 0.5
    A = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 2.0]], dtype=torch.float64)
    teacher = CMAES(popsize=lam, sigma0=sigma)
    mean = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    state = teacher.init(lambda x: (x**2).sum(-1), mean)
    state["C"] = (A @ A.T)[None]
    x = teacher.step(lambda x: (x**2).sum(-1), state)[1]["candidates"][0]
    target = sigma**2 * A @ A.T
    assert (x.mean(0) - mean[0]).abs().max() < 5 * sigma * 2 / math.sqrt(lam)
    assert (torch.cov(x.T) - target).abs().max() < 0.06 * target.abs().max()


@pytest.mark.parametrize("sampler", ["normal", "sobol"])
def test_candidates_are_the_points_step_samples(sampler):
    problem = _problem("quadratic", 3, 4, seed=5)
    teacher = CMAES(sampler=sampler)
    traj = blockwise.rollout(teacher, problem, problem.sample_x0(seed=6), steps=3)
    for k in range(3):
        assert torch.equal(teacher.candidates(traj[k]), traj.extras["candidates"][k])


@pytest.mark.parametrize("sampler", ["normal", "mirrored", "sobol"])
def test_rows_alone_equal_the_batch(sampler):
    problem = _problem("rosenbrock", 4, 3, seed=3)
    x0 = problem.sample_x0(seed=4)
    teacher = CMAES(sampler=sampler, flavour="tutorial")
    batched = blockwise.rollout(teacher, problem, x0, steps=20)
    for b in range(4):
        row = blockwise.rollout(teacher, problem[b], x0[b : b + 1], steps=20)
        for name, value in row.states.items():
            torch.testing.assert_close(value[:, 0], batched.states[name][:, b], rtol=1e-12,
                                       atol=0, msg=name)
        assert torch.equal(row.extras["candidates"][0, 0], batched.extras["candidates"][0, b])
    # a row's key follows its x0, not its position in the batch
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(teacher.init(problem, x0[perm])["key"], batched.states["key"][0][perm])


# ---------------------------------------------------------------- dtypes, devices, contract


def test_float32_follows_float64():
    problem = _problem("quadratic", 3, 4, seed=2)
    x0 = problem.sample_x0(seed=3)
    t64 = blockwise.rollout(CMAES(), problem, x0, steps=5)
    t32 = blockwise.rollout(CMAES(), problem, x0.float(), steps=5)
    for name, value in t32.states.items():
        assert value.dtype == (torch.int64 if name in ("generation", "key") else torch.float32)
        if value.is_floating_point():
            torch.testing.assert_close(value.double(), t64.states[name], rtol=1e-3, atol=1e-5)
    assert t32.extras["h_sigma"].dtype == torch.bool
    assert t32.extras["candidates"].shape == (5, 3, 8, 4)
    assert t32.extras["fvals"].shape == (5, 3, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sampler", ["normal", "mirrored", "sobol"])
def test_cuda_equals_cpu(sampler):
    problem = _problem("quadratic", 4, 5, seed=2)
    x0 = problem.sample_x0(seed=3)
    teacher = CMAES(sampler=sampler)
    cpu = blockwise.rollout(teacher, problem, x0, steps=10)
    gpu = blockwise.rollout(teacher, problem, x0.cuda(), steps=10)
    assert torch.equal(cpu.states["key"], gpu.states["key"].cpu())
    for name, value in cpu.states.items():
        torch.testing.assert_close(gpu.states[name].cpu(), value, rtol=1e-9, atol=1e-12)


def test_plain_callable_and_registry():
    teacher = teachers.make("cma_es", popsize=5, flavour="tutorial", sampler="sobol")
    assert isinstance(teacher, CMAES) and teacher.settings()["popsize"] == 5
    x0 = torch.full((2, 3), 2.0, dtype=torch.float64)
    traj = blockwise.rollout(teacher, lambda x: (x**2).sum(-1), x0, steps=40)
    f_end = (teacher.incumbent(traj[40]) ** 2).sum(-1)
    assert (f_end < 1e-3 * 12).all()
    assert set(traj.extras) == set(CMAES.extra_fields)
    assert set(traj.states) == set(CMAES.state_fields)


def test_non_finite_f_makes_the_state_nan():
    x0 = torch.zeros(3, 2, dtype=torch.float64)

    def objective(x):
        f = (x**2).sum(-1)
        f[1, 2] = float("inf")
        f[2, 0] = float("nan")
        return f

    state, extras = CMAES().step(objective, CMAES().init(objective, x0))
    assert torch.isfinite(state["C"][0]).all()
    assert torch.isnan(state["mean"][1:]).all() and torch.isnan(state["C"][1:]).all()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "settings, match",
    [({"popsize": 1}, "popsize"), ({"popsize": True}, "popsize"), ({"popsize": 4.0}, "popsize"),
     ({"sigma0": 0.0}, "sigma0"), ({"sigma0": -1.0}, "sigma0"), ({"sigma0": math.nan}, "sigma0"),
     ({"sigma0": math.inf}, "sigma0"), ({"flavour": "hansen"}, "flavour"),
     ({"sampler": "lhs"}, "sampler"), ({"active": 1}, "active"), ({"seed": 1.5}, "seed"),
     ({"sigma": 1.0}, "unknown setting")],
)
def test_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        teachers.make("cma_es", **settings)


def test_bad_x0_state_and_candidates():
    teacher = CMAES(popsize=4)
    sphere = lambda x: (x**2).sum(-1)  # noqa: E731
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="x0"):
        teacher.init(sphere, x0[0])
    with pytest.raises(ValueError, match="x0 has non-finite"):
        teacher.init(sphere, torch.tensor([[0.0, math.nan, 0.0]]))
    with pytest.raises(TypeError, match="x0"):
        teacher.init(sphere, torch.zeros(2, 3, dtype=torch.int64))
    state = teacher.init(sphere, x0)
    with pytest.raises(ValueError, match="lacks"):
        teacher.step(sphere, {k: v for k, v in state.items() if k != "C"})
    with pytest.raises(ValueError, match=r"state\['C'\] must have shape \(2, 3, 3\)"):
        teacher.step(sphere, {**state, "C": state["C"][:, :2]})
    with pytest.raises(ValueError, match="generation.*int64"):
        teacher.step(sphere, {**state, "generation": state["generation"].double()})
    with pytest.raises(ValueError, match="sigma.*float64"):
        teacher.step(sphere, {**state, "sigma": state["sigma"].float()})
    with pytest.raises(ValueError, match=r"candidates must have shape .*\(2, 4, 3\)"):
        teacher.step(sphere, state, candidates=torch.zeros(2, 5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="candidates"):
        teacher.step(sphere, state, candidates=torch.zeros(2, 4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="expected shape"):
        teacher.step(lambda x: x.sum(), state)
    with pytest.raises(ValueError, match="sobol sampler supports n <="):
        sobol_points(4, torch.quasirandom.SobolEngine.MAXDIM + 1)
