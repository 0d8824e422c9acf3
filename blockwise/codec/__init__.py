"""Codecs: the invertible map between a teacher's state and a token sequence. See `Codec`.

    >>> from blockwise import problems
    >>> problem = problems.make("sphere", batch=2, dim=3, seed=0)
    >>> codec = make_codec("nelder_mead", problem, mode="in_context", frame="affine")
    >>> state = teachers.make("nelder_mead").init(problem, problem.sample_x0(seed=1))
    >>> enc = codec.encode(state, problem)
    >>> enc.tokens.shape == (2, codec.num_tokens, codec.token_dim)
    True
    >>> torch.allclose(codec.decode(enc.tokens, enc)["simplex"], state["simplex"])
    True

`print(codec.describe())` shows the token layout. A new teacher's codec is one file in this
package and one entry per teacher name in REGISTRY.
"""

from __future__ import annotations

import torch  # noqa: F401  (used by the doctest above)

from blockwise import teachers
from blockwise.codec.base import MODES, Codec, Encoded, Placement
from blockwise.codec.cma_es import CMACodec
from blockwise.codec.gradient import GradientCodec
from blockwise.codec.simplex import SimplexCodec
from blockwise.problems import Problem
from blockwise.teachers import Teacher

REGISTRY: dict[str, type[Codec]] = {
    "nelder_mead": SimplexCodec,
    "parallel_nelder_mead": SimplexCodec,
    "cma_es": CMACodec,
    "gradient_descent": GradientCodec,
    "momentum": GradientCodec,
    "adam": GradientCodec,
}
"""Teacher name -> its codec class."""


def make_codec(
    teacher: Teacher | str,
    problem: Problem,
    mode: str = "in_context",
    frame: str = "scale",
    vertex_f: str = "own",
) -> Codec:
    """The codec for `teacher` (an instance, or a registry name with default settings) on
    problems of `problem`'s family, dimension and settings.

    Args:
        mode: "in_context" (problem tokens; the network evaluates f) or "oracle" (f values, or
            the gradient, at the points the step needs are computed at encode time).
        frame: the frame computed from the input state that encode normalizes into: "none",
            "scale" (translation and scale) or "affine" (the simplex codecs and CMA-ES); see
            `blockwise.codec.frame` and each codec.
        vertex_f: the simplex codecs' f values of the vertices a layer outputs, as passed on
            to the next layer: "own" (the layer's output) or "evaluated" (by the harness).
    """
    if not isinstance(teacher, (str, Teacher)):
        raise TypeError(
            f"make_codec: teacher must be a Teacher or a teacher name, got {type(teacher).__name__}"
        )
    name = teacher if isinstance(teacher, str) else teacher.name
    if name not in REGISTRY:
        raise ValueError(f"make_codec: no codec for teacher {name!r}; expected one of "
                         f"{sorted(REGISTRY)}")
    if isinstance(teacher, str):
        teacher = teachers.make(teacher)
    return REGISTRY[name](teacher, problem, mode, frame, vertex_f)


__all__ = [
    "MODES", "REGISTRY", "CMACodec", "Codec", "Encoded", "GradientCodec", "Placement",
    "SimplexCodec", "make_codec",
]
