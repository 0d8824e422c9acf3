"""The `optimize` fine-tuning objective against independent recomputation: per layer, the mean
log optimality gap of the stack's own iterate relative to s_0's, written out again in float64
numpy (GD and the least-squares optimum included); its edge cases; gradients reaching every
block; and the recipe setting reaching the module."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_model import exact_gd_block

from blockwise import problems, teachers
from blockwise.build import build_codec, new_block
from blockwise.codec import make_codec
from blockwise.config import recipe_from_dict
from blockwise.model import ReadIO
from blockwise.pipeline import run
from blockwise.rollout import rollout
from blockwise.stack import Stack
from blockwise.training.finetune import GAP_FLOOR, RolloutBatch, StackModule, log_gap_loss

GD_RECIPE = {
    "steps": 3,
    "problem": {"family": "least_squares", "dim": 4, "settings": {"n_context": 10}},
    "teacher": {"name": "gradient_descent", "settings": {"lr": 0.7}},
    "block": {"width": 32, "heads": 2, "mlp_ratio": 0.0, "norm": "none", "attention": "linear"},
}


def gd_numpy(x, y, w0, eta, steps):
    """[w_0, ..., w_steps] of w <- w - eta (1/N) X^T (X w - y), per problem; x (B, N, d)."""
    ws = [w0]
    for _ in range(steps):
        w = ws[-1]
        residual = np.einsum("bnd,bd->bn", x, w) - y
        ws.append(w - eta * np.einsum("bnd,bn->bd", x, residual) / x.shape[1])
    return ws


def f_numpy(x, y, w):
    """(1/2N) sum_i (w . x_i - y_i)^2 per problem."""
    return 0.5 * ((np.einsum("bnd,bd->bn", x, w) - y) ** 2).mean(1)


def test_the_loss_is_the_mean_log_gap_of_the_stacks_own_iterate():
    """Blocks that step with eta 1.2 against a teacher with 0.7: the loss scores the stack's
    iterates, not the teacher's, against f* of the least-squares solution (noisy labels, so
    f* > 0 and the gap is not f itself)."""
    d, n_ctx, batch, depth, eta = 4, 10, 16, 3, 1.2
    problem = problems.make("least_squares", batch, d, 7, n_context=n_ctx, noise=0.3)
    gd = teachers.make("gradient_descent", lr=0.7)
    codec = make_codec(gd, problem, mode="in_context")
    blocks = [exact_gd_block(codec, 32, eta, n_ctx) for _ in range(depth)]
    stack = Stack(codec, ReadIO(codec.token_dim, 32).double(), blocks)
    traj = rollout(gd, problem, problem.sample_x0(seed=8, radius=1.0), depth)
    losses = StackModule(stack, objective="optimize").layer_losses(
        RolloutBatch(problem, traj.states)
    )

    x, y = problem.params["x"].numpy(), problem.params["y"].numpy()
    w_star = np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(x, y, strict=True)])
    f_star = f_numpy(x, y, w_star)
    assert f_star.min() > 1e-4  # noisy labels: the optimum is not 0
    ws = gd_numpy(x, y, traj.states["x"][0].numpy(), eta, depth)
    start = f_numpy(x, y, ws[0]) - f_star
    for k, loss in enumerate(losses, start=1):
        want = np.log((f_numpy(x, y, ws[k]) - f_star) / start + GAP_FLOOR).mean()
        assert loss.item() == pytest.approx(want, rel=1e-10, abs=1e-12), k
        # The teacher's own iterate scores differently: the loss is not a distance to it.
        teacher = np.log((traj.states["f"][k].numpy() - f_star) / start + GAP_FLOOR).mean()
        assert abs(loss.item() - teacher) > 0.05, k
    assert [x.item() for x in losses] == sorted(x.item() for x in losses)[::-1]  # descends


def test_log_gap_loss_edges_solved_started_at_the_optimum_and_blown_up():
    f_star = torch.tensor([1.0, 1.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    f0 = torch.tensor([3.0, 3.0, 3.0, 2.0, 4.5], dtype=torch.float64)
    f = torch.tensor([2.0, 1.0, 0.5, 7.0, math.inf], dtype=torch.float64, requires_grad=True)
    loss = log_gap_loss(f, f0, f_star)
    # Row 3 started at f*: left out. Row 1 reached f* and row 2 went below (f* is then the
    # teacher's best): both score the floor. Row 4 blew up: the largest finite log.
    big = math.log(torch.finfo(torch.float64).max)
    want = (math.log(0.5 + GAP_FLOOR) + 2 * math.log(GAP_FLOOR) + big) / 4
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    assert f.grad.isfinite().all()
    assert f.grad[0].item() == pytest.approx(1 / (1 + 2 * GAP_FLOOR) / 4, rel=1e-9)
    assert f.grad[2:].abs().sum() == 0  # below f*, at f* from the start, and blown up


def test_every_block_gets_a_finite_nonzero_gradient_and_the_read_in_out_none():
    recipe = recipe_from_dict(GD_RECIPE)
    problem = problems.make("least_squares", 32, 4, 6, n_context=10)
    gd = teachers.make("gradient_descent", lr=0.7)
    traj = rollout(gd, problem, problem.sample_x0(seed=6), 3)
    codec = build_codec(recipe, problem)
    blocks = [new_block(recipe, k) for k in range(1, 4)]
    stack = Stack(codec, ReadIO(codec.token_dim, 32), blocks)
    module = StackModule(stack, objective="optimize")
    sum(module.layer_losses(RolloutBatch(problem, traj.states))).backward()
    for k, block in enumerate(blocks, start=1):
        grads = [p.grad for p in block.parameters()]
        assert all(g is not None and g.isfinite().all() for g in grads), k
        assert any(g.abs().sum() > 0 for g in grads), k
    assert all(p.grad is None for p in stack.readio.parameters())


def test_the_recipe_objective_reaches_the_module(tmp_path, monkeypatch):
    seen = []
    original = StackModule.layer_losses

    def spy(self, batch):
        seen.append(self.objective)
        return original(self, batch)

    monkeypatch.setattr(StackModule, "layer_losses", spy)
    recipe = recipe_from_dict(
        {
            **GD_RECIPE,
            "steps": 2,
            "data": {
                "train_problems": 32,
                "val_problems": 16,
                "test_problems": 16,
                "cache_dir": str(tmp_path / "cache"),
            },
            "train": {"max_epochs": 1, "batch_size": 16, "warmup_steps": 0},
            "finetune": {
                "max_epochs": 1,
                "batch_size": 16,
                "objective": "optimize",
                "looped": False,
            },
        }
    )
    metrics = run(dataclasses.replace(recipe, out=str(tmp_path / "run")), log=lambda *_: None)
    assert seen and set(seen) == {"optimize"}
    assert metrics["evaluations"]["finetuned"]["layers"] == 2
