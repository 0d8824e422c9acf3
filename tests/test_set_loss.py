"""train.set_loss: a block's output vertices scored as a set, since decode re-sorts them."""

from __future__ import annotations

import itertools

import pytest
import torch

from blockwise import problems, teachers
from blockwise.build import build_codec, new_block
from blockwise.config import RecipeError, load_recipe
from blockwise.model import ReadIO
from blockwise.rollout import rollout
from blockwise.training.block_module import field_losses, matched_to_set
from blockwise.training.pretrain import block_module

WEIGHTS = {"simplex": 1.0, "fvals": 0.5}


def _fields(gen, batch=64, points=3, dim=2):
    return {
        "simplex": torch.randn(batch, points, dim, generator=gen, dtype=torch.float64),
        "fvals": torch.randn(batch, points, generator=gen, dtype=torch.float64),
    }


def test_matching_finds_the_least_loss_of_every_order():
    gen = torch.Generator().manual_seed(0)
    pred, target = _fields(gen), _fields(gen)
    matched = matched_to_set(pred, target, ("simplex", "fvals"), WEIGHTS)
    # Brute force, one example and one order at a time, in float64.
    for b in range(64):
        best = min(
            sum(WEIGHTS[f] * ((pred[f][b, list(o)] - target[f][b]) ** 2).mean().item()
                for f in WEIGHTS)
            for o in itertools.permutations(range(3))
        )
        got = sum(WEIGHTS[f] * ((matched[f][b] - target[f][b]) ** 2).mean().item()
                  for f in WEIGHTS)
        assert got == pytest.approx(best, rel=1e-12, abs=1e-15)
    # The vertices and their f values move together: one order per example maps pred to
    # matched in both fields.
    for b in range(64):
        orders = [o for o in itertools.permutations(range(3))
                  if torch.equal(pred["fvals"][b, list(o)], matched["fvals"][b])]
        assert len(orders) == 1
        assert torch.equal(pred["simplex"][b, list(orders[0])], matched["simplex"][b])


def test_a_reordered_target_costs_nothing_and_the_ordered_loss_sees_it():
    gen = torch.Generator().manual_seed(1)
    target = _fields(gen)
    order = torch.stack([torch.randperm(3, generator=gen) for _ in range(64)])  # (B, 3)
    pred = {"simplex": target["simplex"].gather(1, order[..., None].expand(-1, -1, 2)),
            "fvals": target["fvals"].gather(1, order)}
    matched = matched_to_set(pred, target, ("simplex", "fvals"), WEIGHTS)
    assert all(v.item() == 0 for v in field_losses(matched, target).values())
    assert field_losses(pred, target)["simplex"].item() > 0.1


def test_set_loss_needs_a_codec_that_resorts_and_few_points():
    with pytest.raises(RecipeError, match="train.set_loss"):
        load_recipe("recipes/gd_least_squares.yaml", ["train.set_loss=true"])
    with pytest.raises(RecipeError, match="5040"):  # 7 vertices in n = 6
        load_recipe("recipes/quickstart.yaml", ["train.set_loss=true", "problem.dim=6"])
    assert load_recipe("recipes/quickstart.yaml", ["train.set_loss=true"]).train.set_loss


@pytest.mark.parametrize("set_loss", [True, False])
def test_pretraining_scores_a_reordered_target_as_the_recipe_says(set_loss):
    recipe = load_recipe("recipes/quickstart.yaml", [f"train.set_loss={str(set_loss).lower()}"])
    problem = problems.make("quadratic", batch=32, dim=2, seed=3)
    teacher = teachers.make("nelder_mead")
    traj = rollout(teacher, problem, problem.sample_x0(seed=4), 3)
    codec = build_codec(recipe, problem)
    readio = ReadIO(codec.token_dim, recipe.block.width)
    module = block_module(recipe, 1, new_block(recipe, 1), readio, codec)
    enc = codec.encode(traj[2], problem)
    target = codec.to_frame(traj[3], enc.frame)
    swapped = {f: v[:, [1, 0, 2]] for f, v in target.items()}  # the best two vertices swapped
    module.predict_fields = lambda tokens: swapped  # a block that outputs them so
    loss, _, _ = module.loss({"tokens": enc.tokens.float(), "targets": target})
    assert (loss.item() == 0) == set_loss
