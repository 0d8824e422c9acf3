"""train.objective log_normalized: pretraining's loss on each pair's normalized error."""

from __future__ import annotations

import math

import pytest
import torch

from blockwise import problems, teachers
from blockwise.build import build_codec, new_block
from blockwise.config import RecipeError, load_recipe
from blockwise.errors import normalized_error
from blockwise.model import ReadIO
from blockwise.rollout import rollout
from blockwise.training.block_module import log_normalized_loss
from blockwise.training.pretrain import block_module


def test_the_loss_is_the_mean_log_of_each_pairs_normalized_error():
    gen = torch.Generator().manual_seed(0)
    shape = (50, 3, 2)
    pred, target, previous = (torch.randn(shape, generator=gen, dtype=torch.float64)
                              for _ in range(3))
    previous[:5] = target[:5]  # five pairs whose field did not move: left out
    scale = 0.03
    got = log_normalized_loss(pred, target, previous, scale)
    e = normalized_error(pred, target, previous)
    want = sum(math.log(1 + (x / scale) ** 2) for x in e.tolist() if not math.isnan(x)) / 45
    assert math.isclose(got.item(), want, rel_tol=1e-12)
    assert log_normalized_loss(pred, target, target, scale).item() == 0  # none moved


def test_a_pair_far_off_pulls_less_than_one_near_the_scale():
    target = torch.zeros(2, 1, 2, dtype=torch.float64)
    previous = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]], dtype=torch.float64)
    pred = torch.tensor([[[0.01, 0.0]], [[0.5, 0.0]]], dtype=torch.float64, requires_grad=True)
    log_normalized_loss(pred, target, previous, 0.01).backward()
    near, far = pred.grad[:, 0, 0].tolist()
    assert near > 10 * far > 0


def test_pretraining_uses_the_objective_the_recipe_names():
    recipe = load_recipe("recipes/quickstart.yaml",
                         ["train.objective=log_normalized", "train.error_scale=0.05"])
    problem = problems.make("quadratic", batch=32, dim=2, seed=3)
    traj = rollout(teachers.make("nelder_mead"), problem, problem.sample_x0(seed=4), 3)
    codec = build_codec(recipe, problem)
    readio = ReadIO(codec.token_dim, recipe.block.width)
    module = block_module(recipe, 1, new_block(recipe, 1), readio, codec)
    enc = codec.encode(traj[2], problem)
    target = codec.to_frame(traj[3], enc.frame)
    previous = codec.to_frame(traj[2], enc.frame)
    halfway = {f: (target[f] + previous[f]) / 2 for f in target}  # e = 0.5 on every pair
    module.predict_fields = lambda tokens: halfway
    loss, losses, _ = module.loss({"tokens": enc.tokens.float(), "targets": target,
                                   "previous": previous})
    want = math.log(1 + (0.5 / 0.05) ** 2)
    for f in target:
        assert math.isclose(losses[f].item(), want, rel_tol=1e-9)


def test_an_error_scale_without_its_objective_is_refused():
    with pytest.raises(RecipeError) as info:
        load_recipe("recipes/quickstart.yaml", ["train.error_scale=0.1"])
    assert info.value.key_path == "train.error_scale" and "log_normalized" in info.value.message
