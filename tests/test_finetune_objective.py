"""The fine-tuning objectives against independent recomputation: log(1 + e^2) with e the
normalized error written out again (on random tensors, with its gradient), on a stack that
does nothing, and on a block that outputs the teacher's next simplex with its vertices out of
order; and the recipe setting reaching the module."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from identity_stack import identity_blocks
from torch import nn

from blockwise import problems
from blockwise.build import build_codec, new_block
from blockwise.config import recipe_from_dict
from blockwise.model import ReadIO
from blockwise.pipeline import run
from blockwise.rollout import rollout
from blockwise.stack import Stack
from blockwise.training.block_module import log_normalized_loss
from blockwise.training.finetune import RolloutBatch, StackModule

K = 3
# The scale frame: frame_mse is checked below against that frame written out by hand.
RECIPE = recipe_from_dict(
    {"steps": K, "block": {"width": 32, "heads": 4}, "codec": {"frame": "scale"}}
)


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


@pytest.mark.parametrize("objective", ["log_normalized", "frame_mse"])
def test_a_stack_that_does_nothing_scores_its_distance_from_every_teacher_step(objective):
    problem = problems.make("quadratic", 32, 2, 3, **RECIPE.problem.settings)
    traj = rollout("nelder_mead", problem, problem.sample_x0(seed=3), K)
    codec = build_codec(RECIPE, problem)
    stack = Stack(codec, ReadIO(codec.token_dim, 32), identity_blocks(RECIPE)).double()
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_normalized_loss_is_finite_with_its_gradient_where_e_is_undefined_or_huge(dtype):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(6, 3, 2, generator=g, dtype=dtype).requires_grad_()
    target = torch.randn(6, 3, 2, generator=g, dtype=dtype)
    target[:3] = 0.0
    prev = target.clone()
    prev[:3, 0, 0] = 1e-160 if dtype == torch.float64 else 1e-22  # move^2 denormal: e^2 = inf
    prev[4:] = torch.randn(2, 3, 2, generator=g, dtype=dtype)  # prev[3]: no move at all
    miss2 = (pred - target).detach().square().flatten(1).sum(1)
    move2 = (target - prev).square().flatten(1).sum(1)
    assert (miss2[:3] / move2[:3]).isinf().all()  # the case the clamp is for
    loss = log_normalized_loss(pred, target, prev)
    loss.backward()
    # The model reaches the loss through pred alone (target and prev are the teacher's).
    assert loss.isfinite() and pred.grad.isfinite().all()


class Replay(nn.Module):
    """A block whose layer outputs given tokens: it adds `out - tokens` to the stream."""

    def __init__(self, tokens, out, width):
        super().__init__()
        pad = torch.zeros(*out.shape[:-1], width - out.shape[-1], dtype=out.dtype)
        self.delta = torch.cat([out - tokens, pad], dim=-1)

    def forward(self, h):
        return h + self.delta


def test_the_loss_scores_the_decoded_state_which_sorts_the_vertices():
    problem = problems.make("quadratic", 16, 2, 4, **RECIPE.problem.settings)
    traj = rollout("nelder_mead", problem, problem.sample_x0(seed=4), 1)
    codec = build_codec(RECIPE, problem)
    s0, s1 = {k: v[0] for k, v in traj.states.items()}, {k: v[1] for k, v in traj.states.items()}
    enc = codec.encode(s0, problem)
    flipped = {"simplex": s1["simplex"].flip(1), "fvals": s1["fvals"].flip(1)}
    out = codec.write(enc.tokens, codec.to_frame(flipped, enc.frame))
    block = Replay(enc.tokens, out, 32)
    stack = Stack(codec, ReadIO(codec.token_dim, 32).double(), [block], looped=True, depth=1)
    batch = RolloutBatch(problem, {k: v[:2] for k, v in traj.states.items()})
    # Decoded, the flipped simplex is the teacher's s_1 again: nothing to correct.
    (loss,) = StackModule(stack).layer_losses(batch)
    assert loss.item() < 1e-20
    # The raw output fields, in the order the block wrote them, are far from it.
    (raw,) = StackModule(stack, objective="frame_mse").layer_losses(batch)
    assert raw.item() > 1e-3


def test_the_recipe_objective_reaches_the_module(tmp_path, monkeypatch):
    seen = []
    original = StackModule.layer_losses

    def spy(self, batch):
        seen.append((self.objective, self.balance_layers))
        return original(self, batch)

    monkeypatch.setattr(StackModule, "layer_losses", spy)
    recipe = recipe_from_dict(
        {
            "steps": 1,
            "block": {"width": 32, "heads": 4},
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
                "objective": "frame_mse",
                "balance_layers": True,
                "looped": False,
            },
        }
    )
    run(dataclasses.replace(recipe, out=str(tmp_path / "run")), log=lambda *_: None)
    assert seen and set(seen) == {("frame_mse", True)}
    with pytest.raises(ValueError, match="objective"):
        StackModule(
            Stack(
                build_codec(recipe, problems.make("quadratic", 2, 2, 0)),
                ReadIO(16, 32),
                identity_blocks(RECIPE),
            ),
            objective="frame-mse",
        )


def test_balanced_layers_add_up_the_log_of_each_layers_loss():
    """On a stack that does nothing, and on made-up losses: layer 1 near exact going 100x
    worse while layers 2-3 gain 1% is a gain to a plain sum and a loss of log(100) (less the
    gains' logs) to the balanced one."""
    problem = problems.make("quadratic", 16, 2, 5, **RECIPE.problem.settings)
    traj = rollout("nelder_mead", problem, problem.sample_x0(seed=5), K)
    codec = build_codec(RECIPE, problem)
    stack = Stack(codec, ReadIO(codec.token_dim, 32), identity_blocks(RECIPE)).double()
    batch = RolloutBatch(problem, traj.states)
    plain = StackModule(stack, layer_weight_ratio=2.0)
    balanced = StackModule(stack, layer_weight_ratio=2.0, balance_layers=True)
    losses = plain.layer_losses(batch)
    assert torch.equal(torch.stack(balanced.layer_losses(batch)), torch.stack(losses))
    want = sum(2.0**k * math.log(x.item() + 1e-30) for k, x in enumerate(losses))
    assert balanced.total_loss(losses).item() == pytest.approx(want, rel=1e-12)
    assert plain.total_loss(losses).item() == pytest.approx(
        sum(2.0**k * x.item() for k, x in enumerate(losses)), rel=1e-12
    )
    a, b = torch.tensor([1e-12, 1.0, 1.0]), torch.tensor([1e-10, 0.99, 0.99])
    m = StackModule(stack, balance_layers=True)
    assert m.total_loss(list(b)) - m.total_loss(list(a)) == pytest.approx(
        math.log(100) + 2 * math.log(0.99), rel=1e-5
    )
    p = StackModule(stack)
    assert p.total_loss(list(b)) < p.total_loss(list(a))  # the trade a plain sum takes
    with pytest.raises(ValueError, match="balance_layers"):
        StackModule(stack, objective="optimize", balance_layers=True)


def test_every_block_gets_a_finite_nonzero_gradient_through_decode_and_sort():
    problem = problems.make("quadratic", 32, 2, 6, **RECIPE.problem.settings)
    traj = rollout("nelder_mead", problem, problem.sample_x0(seed=6), K)
    codec = build_codec(RECIPE, problem)
    blocks = [new_block(RECIPE, k) for k in range(1, K + 1)]
    stack = Stack(codec, ReadIO(codec.token_dim, 32), blocks)
    sum(StackModule(stack).layer_losses(RolloutBatch(problem, traj.states))).backward()
    for k, block in enumerate(blocks, start=1):
        grads = [p.grad for p in block.parameters() if p.requires_grad]
        assert all(g is not None and g.isfinite().all() for g in grads), k
        assert any(g.abs().sum() > 0 for g in grads), k
