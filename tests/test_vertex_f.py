"""codec.vertex_f: the f values of a layer's output vertices, the layer's own or evaluated by the
harness, as the next layer reads them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from blockwise import problems, teachers
from blockwise.checkpoints import load_stack, save_stack
from blockwise.codec import make_codec
from blockwise.config import RecipeError, load_recipe
from blockwise.model import Block, ReadIO
from blockwise.rollout import rollout
from blockwise.stack import Stack

RECIPES = "recipes"


def _decoded_with_wrong_f(vertex_f: str, mode: str = "in_context"):
    """A layer output holding the teacher's next simplex with f values off by up to 3x the
    simplex's f spread, decoded; and the teacher's next state and the problem."""
    problem = problems.make("quadratic", batch=32, dim=2, seed=11)
    teacher = teachers.make("nelder_mead")
    traj = rollout(teacher, problem, problem.sample_x0(seed=12), 6)
    codec = make_codec(teacher, problem, mode, "affine", vertex_f)
    enc = codec.encode(traj[5], problem)
    target = codec.to_frame(traj[6], enc.frame)
    noise = 3 * torch.rand(target["fvals"].shape, generator=torch.Generator().manual_seed(0))
    tokens = codec.write(enc.tokens, {**target, "fvals": target["fvals"] + noise})
    return codec.decode(tokens, enc), traj[6], problem


@pytest.mark.parametrize("mode", ["in_context", "oracle"])
def test_evaluated_vertex_f_is_f_at_the_output_vertices_sorted(mode):
    state, teacher_next, problem = _decoded_with_wrong_f("evaluated", mode)
    x = state["simplex"].double()
    # float64 recomputation of f(x) = (x - x*)^T A (x - x*) from the problem's own minimizer
    # and Hessian: the harness's f, independently of the codec.
    d = x - problem.minimizer()[:, None, :]
    hessian = torch.stack([torch.autograd.functional.hessian(
        lambda v, b=b: problem[b:b + 1](v[None, None])[0, 0], d[b, 0]) for b in range(32)]) / 2
    f = torch.einsum("bmi,bij,bmj->bm", d, hessian, d)
    assert torch.allclose(state["fvals"], f, rtol=1e-10, atol=1e-14)
    assert (state["fvals"].diff(dim=1) >= 0).all()
    # The teacher's next simplex, re-sorted by true f, is what came out.
    assert torch.allclose(state["simplex"], teacher_next["simplex"], rtol=1e-9, atol=1e-12)


def test_own_vertex_f_passes_the_layer_output_on():
    state, teacher_next, _ = _decoded_with_wrong_f("own")
    assert not torch.allclose(state["fvals"], teacher_next["fvals"], rtol=1e-3)


def test_vertex_f_evaluated_is_for_simplex_codecs_only(tmp_path):
    with pytest.raises(RecipeError, match="vertex_f"):
        load_recipe(f"{RECIPES}/gd_least_squares.yaml", ["codec.vertex_f=evaluated"])
    recipe = load_recipe(f"{RECIPES}/quickstart.yaml", ["codec.vertex_f=evaluated"])
    assert recipe.codec.vertex_f == "evaluated"


def test_a_checkpoint_keeps_its_vertex_f(tmp_path):
    recipe = load_recipe(f"{RECIPES}/quickstart.yaml", ["codec.vertex_f=evaluated", "steps=2"])
    problem = problems.make("quadratic", batch=1, dim=2, seed=0)
    codec = make_codec(teachers.make("nelder_mead"), problem, "in_context", "affine", "evaluated")
    b = recipe.block
    blocks = [Block(b.width, b.heads, b.mlp_ratio) for _ in range(2)]
    stack = Stack(codec, ReadIO(codec.token_dim, b.width), blocks)
    save_stack(stack, recipe, tmp_path / "c", stage="stacked")
    assert load_stack(tmp_path / "c").codec.vertex_f == "evaluated"
    own = dataclasses.replace(recipe, codec=dataclasses.replace(recipe.codec, vertex_f="own"))
    with pytest.raises(ValueError, match="vertex_f"):
        save_stack(stack, own, tmp_path / "d", stage="stacked")
