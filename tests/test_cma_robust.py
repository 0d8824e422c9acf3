"""CMA-ES under bad covariance matrices: one bad row stays one bad row, and the gradient of the
candidates with respect to C is finite where C has repeated eigenvalues, near-singular or (for
an emulated C, projected) indefinite.

The pycma references follow tests/pycma_ref.py: C is placed into pycma's sampler and decomposed
there (`update_now(-1)`), and both sides get pycma's own ask() points.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from pycma_ref import make_es, snapshot, stack

import blockwise
from blockwise import problems
from blockwise.codec import make_codec
from blockwise.teachers import cma_es
from blockwise.teachers.cma_es import CMAES
from blockwise.teachers.sampling import standard_normals

N, BATCH, BAD = 4, 5, 2
FIELDS = ("mean", "sigma", "C", "p_sigma", "p_c")


def _rotation(seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(N, N, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    return q


def _with_eigenvalues(values) -> torch.Tensor:
    """A symmetric (N, N) matrix with the given eigenvalues in a fixed random basis."""
    q = _rotation()
    C = q @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ q.T
    return (C + C.T) / 2


def _setup(batch: int = BATCH):
    """cma_es_4d's teacher and problem family, three generations in (C is no longer C_0)."""
    problem = problems.make("quadratic", batch=batch, dim=N, seed=11, condition=10.0)
    teacher = CMAES(sigma0=0.5, sampler="mirrored")
    traj = blockwise.rollout(teacher, problem, problem.sample_x0(seed=12), steps=3)
    assert not traj.diverged.any()
    return teacher, problem, traj[3]


def _poisoned(state: dict, field: str, value) -> dict:
    state = {name: v.clone() for name, v in state.items()}
    state[field][BAD] = value
    return state


NAN, INF = math.nan, math.inf
# Finite, but its symmetrisation (C + C^T) / 2 overflows to inf.
HUGE = 1.7e308 * _with_eigenvalues([1.0, -0.5, 0.25, 0.75])


# ---------------------------------------------------------------- one bad row


@pytest.mark.parametrize(
    "field, value",
    [("C", NAN), ("C", INF), ("C", HUGE), ("mean", NAN), ("sigma", NAN), ("sigma", INF)],
    ids=["C-nan", "C-inf", "C-overflows", "mean-nan", "sigma-nan", "sigma-inf"],
)
def test_one_bad_row_stays_one_bad_row(field, value):
    """A hand-written loop of two steps: the bad row turns NaN in every floating field (what
    `rollout` marks as diverged), every other row is bit for bit the clean batch's."""
    teacher, problem, clean = _setup()
    bad = _poisoned(clean, field, value)
    for _ in range(2):
        clean, clean_extras = teacher.step(problem, clean)
        bad, extras = teacher.step(problem, bad)
    good = torch.arange(BATCH) != BAD
    for name, tensor in bad.items():
        assert torch.equal(tensor[good], clean[name][good]), name
        if tensor.is_floating_point():
            assert torch.isnan(tensor[BAD]).all(), name
    for name, tensor in extras.items():
        assert torch.equal(tensor[good], clean_extras[name][good]), name
    assert torch.isnan(teacher.candidates(bad)[BAD]).all()


def test_eigh_rows_equal_the_clean_batch_and_chunks_change_nothing(monkeypatch):
    """Good rows of the guarded eigh are torch's own batched eigh, bit for bit, whatever the
    bad rows hold and however the batch is chunked. A finite matrix that the solver fails on
    (not seen from LAPACK on a CPU; cuSOLVER's Jacobi eigh caps its sweeps) is simulated."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(7, N, N, dtype=torch.float64, generator=g)
    C = A @ A.mT + 0.1 * torch.eye(N, dtype=torch.float64)
    reference = torch.linalg.eigh(C)
    bad_rows = [1, 4, 5]
    poisoned = C.clone()
    poisoned[1], poisoned[4, 0, 0], poisoned[5, 0, 0] = NAN, 1234.5, INF
    eigh = torch.linalg.eigh

    def failing_eigh(matrices):
        if (matrices[..., 0, 0] == 1234.5).any():
            raise torch.linalg.LinAlgError("linalg.eigh: failed to converge (simulated)")
        return eigh(matrices)

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    monkeypatch.setattr(cma_es, "_EIGH_CHUNK", 3)
    values, vectors = cma_es._eigh_rows(poisoned)
    good = torch.tensor([b not in bad_rows for b in range(7)])
    assert torch.equal(values[good], reference.eigenvalues[good])
    assert torch.equal(vectors[good], reference.eigenvectors[good])
    assert torch.isnan(values[~good]).all() and torch.isnan(vectors[~good]).all()


def _pycma_step(C: torch.Tensor):
    """pycma's state after ask with covariance C, its candidates, and its state after tell."""
    es = make_es(np.full(N, 0.3), 0.5, seed=1, popsize=None, active=True)
    es.sm.C = C.numpy().copy()
    es.sm.update_now(-1)  # decompose the C just set, as ask would do after a tell
    X = np.array(es.ask())
    pre = snapshot(es)
    f = (X**2).sum(-1)
    assert len(set(f.tolist())) == len(f), "ties in f"
    es.tell(list(X), list(f))
    return pre, torch.from_numpy(X), snapshot(es)


@pytest.mark.parametrize(
    "eigenvalues, rtol",
    [
        ((1.0, 1.0, 1.0, 1.0), 1e-10),
        ((1.0, 1.0, 4.0, 4.0), 1e-10),
        # the smallest eigenvalue carries a relative error of about eps * 1e12 on both sides
        ((1.0, 1e-4, 1e-8, 1e-12), 1e-8),
        # at 1e-16 = eps * lambda_max it is known to no digit (torch 9.8e-17, numpy 1.19e-16):
        # only that the row is finite and moves as pycma's does is checked
        ((1.0, 1e-5, 1e-10, 1e-16), 0.5),
    ],
    ids=["identity", "repeated", "cond1e12", "cond1e16"],
)
def test_repeated_and_ill_conditioned_C_follow_pycma(eigenvalues, rtol):
    """Next to a NaN row, a C with repeated eigenvalues gives pycma's update to rounding; an
    ill-conditioned one as closely as its conditioning allows in sigma, C and p_sigma, which go
    through C^-1/2 (mean and p_c come from the given candidates alone). The NaN row's C^-1/2
    makes its sigma, C and p_sigma NaN, which `rollout` marks as diverged."""
    C = _with_eigenvalues(eigenvalues)
    pre, X, post = _pycma_step(C)
    state = stack([pre, pre], torch.zeros(2, dtype=torch.int64))
    state["C"][1] = NAN
    new, _ = CMAES(sigma0=0.5).step(lambda x: (x**2).sum(-1), state, candidates=X.expand(2, -1, -1))
    for name in FIELDS:
        ref = post[name]
        err = np.max(np.abs(new[name][0].numpy() - ref)) / np.max(np.abs(ref))
        assert err <= (1e-10 if name in ("mean", "p_c") else rtol), (name, err)
    for name in ("sigma", "C", "p_sigma"):
        assert torch.isnan(new[name][1]).all(), name


# ---------------------------------------------------------------- gradient through C^1/2


def _sqrt_gradient_reference(C: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """d<G, C^1/2>/dC for symmetric positive definite C, without eigenvectors: with S = C^1/2,
    dS solves the Sylvester equation S dS + dS S = dC, so the gradient H solves S H + H S = G
    (the operator is self-adjoint), here as (S (x) I + I (x) S^T) vec H = vec G with row-major
    vec; C's symmetrisation then symmetrises H. S is scipy's sqrtm (Schur based)."""
    S = torch.from_numpy(np.real(scipy.linalg.sqrtm(C.numpy())))
    eye = torch.eye(N, dtype=torch.float64)
    H = torch.linalg.solve(torch.kron(S, eye) + torch.kron(eye, S.T.contiguous()), G.reshape(-1))
    H = H.reshape(N, N)
    return (H + H.T) / 2


NEAR_REPEATED = (1.0, 1.0 + 1e-12, 2.0, 2.0 - 1e-13)
NEAR_SINGULAR = (1.0, 1e-3, 1e-6, 1e-9)
GRADIENT_CASES = {
    "identity": torch.eye(N, dtype=torch.float64),  # tutorial's C_0, and near any C_0 early on
    "near-repeated": _with_eigenvalues(NEAR_REPEATED),
    "near-singular": _with_eigenvalues(NEAR_SINGULAR),
    "distinct": _with_eigenvalues((0.5, 1.0, 2.0, 3.0)),
}


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_candidates_gradient_equals_sylvester_reference(case):
    """x_k = m + sigma z_k C^1/2, so for L = sum W * x the gradient reaching C^1/2 is
    G = sigma z^T W; the teacher's gradient with respect to C must equal the Sylvester one."""
    teacher, problem, state = _setup(batch=1)
    C = GRADIENT_CASES[case][None].clone().requires_grad_(True)
    x = teacher.candidates({**state, "C": C})
    W = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (x * W).sum().backward()
    z = standard_normals("mirrored", state["key"], state["generation"], x.shape[1], N,
                         torch.float64)[0]
    G = state["sigma"][0] * z.T @ W[0]
    expected = _sqrt_gradient_reference(C[0].detach(), G)
    assert torch.isfinite(C.grad).all()
    torch.testing.assert_close(C.grad[0], expected, rtol=1e-7, atol=1e-9 * expected.abs().max())


def _codec_loss(C: torch.Tensor, codec, problem, enc, weights) -> torch.Tensor:
    """Fine-tuning's path from layer 2 on: tokens holding C are decoded, and the decoded state is
    encoded again, which samples the next candidates from C^1/2 (and evaluates f at them)."""
    fields = codec.to_frame({name: enc.state[name] for name in codec.learned_fields}, enc.frame)
    tokens = codec.write(enc.tokens, {**fields, "C": C})
    out = codec.encode(codec.decode(tokens, enc), problem).tokens
    sampled = out[:, codec.positions["candidate"]]
    return (sampled[..., codec.slots["coords"]] * weights[0]).sum() + (
        sampled[..., codec.slots["f"]] * weights[1]).sum()


def test_projected_candidates_sample_the_nearest_psd_matrix():
    """project=True leaves a positive definite C's points bit for bit and samples a C with
    negative eigenvalues from C_+ = B max(L, 0) B^T (Higham 1988), its gradient then being
    the spectral one of sqrt(max(l, 0)): finite differences agree (eigenvalues away from 0)."""
    teacher, problem, state = _setup(batch=2)
    assert torch.equal(teacher.candidates(state, project=True), teacher.candidates(state))
    C = torch.stack([_with_eigenvalues((2.0, 1.0, -0.5, -1.0)),
                     _with_eigenvalues((1.0, 0.5, 0.25, -0.3))])
    q = _rotation()
    plus = torch.stack([q @ torch.diag(torch.tensor(v, dtype=torch.float64)) @ q.T
                        for v in ((2.0, 1.0, 0.0, 0.0), (1.0, 0.5, 0.25, 0.0))])
    x = teacher.candidates({**state, "C": C}, project=True)
    assert torch.isnan(teacher.candidates({**state, "C": C})).all()
    # every candidate's deviation lies in C_+'s range, with covariance sigma^2 C_+ in the mean
    y = (x - state["mean"][:, None]) / state["sigma"][:, None, None]
    z = standard_normals("mirrored", state["key"], state["generation"], x.shape[1], N,
                         torch.float64)
    root = torch.from_numpy(np.stack([np.real(scipy.linalg.sqrtm(m.numpy())) for m in plus]))
    torch.testing.assert_close(y, z @ root, rtol=0, atol=1e-7)
    W = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert torch.autograd.gradcheck(
        lambda c: (teacher.candidates({**state, "C": c}, project=True) * W).sum(),
        (C.clone().requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-5,
    )


@pytest.mark.parametrize("frame", ["scale", "affine"])
@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_gradient_through_the_codec_is_finite_and_matches_finite_differences(case, frame):
    teacher, problem, state = _setup(batch=2)
    codec = make_codec(teacher, problem, "oracle", frame)
    enc = codec.encode(state, problem)
    count = codec.positions["candidate"]
    shape = (2, count.stop - count.start)
    g = torch.Generator().manual_seed(5)
    weights = (torch.randn(*shape, N, dtype=torch.float64, generator=g),
               torch.randn(*shape, 1, dtype=torch.float64, generator=g))
    C = GRADIENT_CASES[case].expand(2, N, N).clone().requires_grad_(True)
    _codec_loss(C, codec, problem, enc, weights).backward()
    assert torch.isfinite(C.grad).all()
    if case != "near-singular":  # finite differences of size 1e-6 would leave the cone there
        assert torch.autograd.gradcheck(
            lambda c: _codec_loss(c, codec, problem, enc, weights), (C.detach().requires_grad_(),),
            eps=1e-6, atol=1e-5, rtol=1e-5,
        )
