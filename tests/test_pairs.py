"""One-step training pairs: the shuffled control keeps each input and draws its target from
another pair of the same step."""

from __future__ import annotations

import torch

from blockwise import problems, teachers
from blockwise.codec import make_codec
from blockwise.rollout import rollout
from blockwise.training.pairs import layer_pairs


def _setup(steps: int = 3, batch: int = 64):
    problem = problems.make("quadratic", batch=batch, dim=2, seed=3)
    teacher = teachers.make("nelder_mead")
    traj = rollout(teacher, problem, problem.sample_x0(seed=4), steps)
    return make_codec(teacher, problem, mode="in_context", frame="affine"), problem, traj


def _rows(t: torch.Tensor) -> list[tuple]:
    return sorted(tuple(r) for r in t.reshape(t.shape[0], -1).tolist())


def test_shuffled_pairs_permute_targets_within_each_step():
    codec, problem, traj = _setup()
    plain = layer_pairs(codec, problem, traj, 1, "shared")
    shuffled = layer_pairs(codec, problem, traj, 1, "shared", shuffle_seed=7)
    assert torch.equal(plain.tokens, shuffled.tokens)
    for f in plain.targets:
        assert torch.equal(plain.previous[f], shuffled.previous[f])
        for k in range(3):  # the pooled pairs come step by step, 64 problems each
            rows = slice(64 * k, 64 * (k + 1))
            assert _rows(plain.targets[f][rows]) == _rows(shuffled.targets[f][rows])
        same = (plain.targets[f] == shuffled.targets[f]).flatten(1).all(1).float().mean()
        assert same < 0.1, f  # a random permutation keeps about one row in place


def test_shuffled_pairs_are_seeded_and_teacher_inputs_under_greedy():
    codec, problem, traj = _setup()
    a = layer_pairs(codec, problem, traj, 2, "teacher", shuffle_seed=1)
    b = layer_pairs(codec, problem, traj, 2, "greedy", shuffle_seed=1)  # no frozen stack needed
    c = layer_pairs(codec, problem, traj, 2, "teacher", shuffle_seed=2)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.targets["simplex"], b.targets["simplex"])
    assert not torch.equal(a.targets["simplex"], c.targets["simplex"])
