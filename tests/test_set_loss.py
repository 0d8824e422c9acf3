"""train.set_loss: a block's output vertices scored as a set, since decode re-sorts them."""

from __future__ import annotations

import itertools

import pytest
import torch

from blockwise.config import RecipeError, load_recipe
from blockwise.training.block_module import field_losses, matched_to_set

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
    # The vertices and their f values move together: matched is a reordering of pred.
    for f in WEIGHTS:
        assert torch.equal(matched[f].sort(dim=1).values, pred[f].sort(dim=1).values)


def test_a_reordered_target_costs_nothing_and_the_ordered_loss_sees_it():
    gen = torch.Generator().manual_seed(1)
    target = _fields(gen)
    order = torch.stack([torch.randperm(3, generator=gen) for _ in range(64)])  # (B, 3)
    pred = {"simplex": target["simplex"].gather(1, order[..., None].expand(-1, -1, 2)),
            "fvals": target["fvals"].gather(1, order)}
    matched = matched_to_set(pred, target, ("simplex", "fvals"), WEIGHTS)
    assert all(v.item() == 0 for v in field_losses(matched, target).values())
    assert field_losses(pred, target)["simplex"].item() > 0.1


def test_set_loss_needs_a_codec_that_resorts(tmp_path):
    with pytest.raises(RecipeError, match="train.set_loss"):
        load_recipe("recipes/gd_least_squares.yaml", ["train.set_loss=true"])
    assert load_recipe("recipes/quickstart.yaml", ["train.set_loss=true"]).train.set_loss
