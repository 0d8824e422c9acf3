"""The fine-tuning objectives against independent recomputation: log(1 + e^2) with e the
normalized error written out again, on a stack that does nothing and on random predictions."""

from __future__ import annotations

import math

import pytest
import torch

from blockwise import problems
from blockwise.config import recipe_from_dict
from blockwise.model import ReadIO
from blockwise.rollout import rollout
from blockwise.stack import Stack
from blockwise.training.finetune import RolloutBatch, StackModule, log_normalized_loss
from blockwise.training.pretrain import build_codec, new_block

K = 3
RECIPE = recipe_from_dict({"steps": K, "block": {"width": 32, "heads": 4}})


def normalized(pred, target, prev):
    """Per-problem ||pred - target|| / ||target - prev||, float64, NaN where the teacher
    did not move."""
    miss = (pred - target).flatten(1).double().norm(dim=1)
    move = (target - prev).flatten(1).double().norm(dim=1)
    return torch.where(move > 0, miss / move, torch.nan)


def test_log_normalized_loss_is_the_mean_of_log1p_e_squared_over_moved_problems():
    g = torch.Generator().manual_seed(0)
    pred, target, prev = (torch.randn(20, 3, 2, generator=g, dtype=torch.float64) for _ in "abc")
    prev[[3, 7]] = target[[3, 7]]  # these did not move: left out
    e = normalized(pred, target, prev)
    want = torch.log1p(e[~e.isnan()] ** 2).mean()
    assert log_normalized_loss(pred, target, prev).item() == pytest.approx(want.item(), rel=1e-13)
    # Scale-free: the same in any frame (a per-problem shift and scale).
    shift = torch.randn(20, 1, 2, generator=g, dtype=torch.float64)
    scale = torch.rand(20, 1, 1, generator=g, dtype=torch.float64) + 0.1
    framed = [(t - shift) / scale for t in (pred, target, prev)]
    assert log_normalized_loss(*framed).item() == pytest.approx(want.item(), rel=1e-12)
    none_moved = log_normalized_loss(pred, target, target)
    assert none_moved.item() == 0.0 and none_moved.isfinite()


def identity_blocks() -> list:
    """Blocks whose attention and MLP add nothing to the residual stream."""
    blocks = [new_block(RECIPE, k) for k in range(1, K + 1)]
    with torch.no_grad():
        for block in blocks:
            for out in (block.attn.out, block.mlp[2]):
                out.weight.zero_()
                out.bias.zero_()
    return blocks


@pytest.mark.parametrize("objective", ["log_normalized", "frame_mse"])
def test_a_stack_that_does_nothing_scores_its_distance_from_every_teacher_step(objective):
    problem = problems.make("quadratic", 32, 2, 3, **RECIPE.problem.settings)
    traj = rollout("nelder_mead", problem, problem.sample_x0(seed=3), K)
    codec = build_codec(RECIPE, problem)
    stack = Stack(codec, ReadIO(codec.token_dim, 32), identity_blocks()).double()
    module = StackModule(stack, objective=objective)
    losses = module.layer_losses(RolloutBatch(problem, traj.states))
    s = traj.states
    for k, loss in enumerate(losses, start=1):
        # Every layer keeps s_0, so layer k predicts s_0 against s_k, the teacher from s_{k-1}.
        want = 0.0
        for f in ("simplex", "fvals"):
            if objective == "log_normalized":
                e = normalized(s[f][0], s[f][k], s[f][k - 1])
                want += torch.log1p(e[~e.isnan()] ** 2).mean().item()
            else:
                # In the frame of s_0: best vertex and inf-norm spread; f best and f range.
                simplex, fvals = s["simplex"][0], s["fvals"][0]
                spread = (simplex - simplex[:, :1]).abs().amax(dim=(1, 2))
                frange = fvals[:, -1] - fvals[:, 0]
                if f == "simplex":
                    miss = (s[f][0] - s[f][k]) / spread[:, None, None]
                else:
                    miss = (s[f][0] - s[f][k]) / frange[:, None]
                want += miss.square().mean().item()
        assert loss.item() == pytest.approx(want, rel=1e-9), k
    if objective == "log_normalized":
        assert losses[0].item() == pytest.approx(2 * math.log(2), rel=1e-12)  # e = 1 exactly
