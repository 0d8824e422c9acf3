"""The gradient-teacher codec: the iterate and the optimizer's buffers, one token each.

Serves "gradient_descent", "momentum" and "adam". Tokens, after the problem tokens (kept in
both modes):

    kind      count  slots             holds                           teachers
    iterate   1      coords, step      x and the step count            all (step: momentum, adam)
    buffer    1      buffer            the momentum buffer b           momentum
    m         1      m                 Adam's first moment             adam
    v         1      v                 Adam's second moment            adam
    gradient  1      grad              df/dx at x                      all, oracle mode only

Slots: type, one, coords (n), step (1), buffer / m / v (n each, where present), grad (n,
oracle mode only), then one group per problem token group. The step count is an input: the first
momentum step copies the gradient, and Adam's bias corrections depend on it.

Objective modes: in_context gives no gradient, so the network must compute df/dx from the
problem tokens (for least squares, from the context pairs, as in von Oswald et al. 2023).
oracle adds a gradient token. The problem tokens stay in oracle mode too, as they are in the
frame's f_shift = f(x), which the harness evaluates.

Frame: translation only, centre = x, scale = 1, f_shift = f(x), f_scale = 1, so the input iterate
is 0 with f 0. Scaling would change a gradient step's effective rate (x' moves by lr s^-2 f_scale
g'), so the step would no longer be the teacher's. Gradient-like fields transform as the
gradient, (s / f_scale) g, and v as its square; with this frame both factors are 1, but
`to_frame` applies them for any frame.

Learned fields: x, and buffer or m, v where the teacher has them. Not emulated: step is
advanced by one, and f = f(x') is evaluated at the emulated iterate. A gradient step never reads
f, so learning it would only cost capacity (in the frame f' - f = -|g|^2 + g^T H g / 2 is quartic
in the tokens: one linear-attention layer cannot produce it), and feeding a block's f back into
the next layer's frame would let its error leak into a step that is otherwise exact.
"""

from __future__ import annotations

from torch import Tensor

from blockwise.codec import frame as frames
from blockwise.codec.base import Codec, Placement
from blockwise.codec.layout import Segment
from blockwise.problems import Frame, Objective, evaluate, gradient
from blockwise.teachers.base import State

BUFFERS = {"buffer": 1, "m": 1, "v": 2}
"""Optimizer buffer -> the power of the gradient it scales as: momentum buffer and Adam's m
average gradients, Adam's v averages their squares."""


class GradientCodec(Codec):
    """An iterate token, one token per buffer, and in oracle mode a gradient token."""

    bookkeeping = {"step": "advanced by one", "f": "f(x) at the emulated iterate"}
    oracle_needs_problem = True

    def _configure(self) -> None:
        fields = tuple(self.teacher.state_fields)
        self.buffers = tuple(name for name in fields if name not in ("x", "f", "step"))
        unknown = set(self.buffers) - set(BUFFERS)
        if unknown:
            raise ValueError(f"{self.name} codec: no rule for state field(s) {sorted(unknown)}")
        self.learned_fields = ("x",) + self.buffers

    def _slots(self) -> dict[str, tuple[int, str]]:
        n = self.dim
        slots = {"coords": (n, "the iterate x")}
        if self.buffers:
            slots["step"] = (1, "steps taken so far (input only)")
        slots.update({name: (n, f"the optimizer's {name!r}") for name in self.buffers})
        if self.mode == "oracle":
            slots["grad"] = (n, "df/dx at the iterate")
        return slots

    def _segments(self) -> list[Segment]:
        iterate = ("coords", "step") if self.buffers else ("coords",)
        segments = [Segment("iterate", 1, iterate, "the iterate")]
        segments += [Segment(name, 1, (name,), f"buffer {name!r}") for name in self.buffers]
        if self.mode == "oracle":
            segments.append(Segment("gradient", 1, ("grad",), "the gradient at x"))
        return segments

    def _placements(self) -> dict[str, Placement]:
        n = self.dim
        placements = {"x": Placement("iterate", "coords", (n,))}
        placements.update({name: Placement(name, name, (n,)) for name in self.buffers})
        return placements

    def _inputs(self, state: State, objective: Objective) -> dict[str, Tensor]:
        if self.mode != "oracle":
            return {}
        return {"grad": gradient(objective, state["x"][:, None, :])[:, 0].to(state["x"].dtype)}

    def _frame(self, state: State, inputs: dict[str, Tensor]) -> Frame:
        x = state["x"]
        ones = x.new_ones(x.shape[0])
        return Frame(x, ones, state["f"], ones)

    def _put_inputs(
        self, tokens: Tensor, state: State, inputs: dict[str, Tensor], frame: Frame
    ) -> None:
        if self.buffers:
            step = state["step"].to(tokens.dtype)
            self.layout.put(tokens, "iterate", "step", step[:, None, None])
        if "grad" in inputs:
            g = inputs["grad"] * frames.gradient_factor(frame, inputs["grad"])
            self.layout.put(tokens, "gradient", "grad", g[:, None, :])

    def _to_frame(self, state: State, frame: Frame) -> dict[str, Tensor]:
        fields = {"x": frames.points_to(frame, state["x"])}
        for name in self.buffers:
            fields[name] = state[name] * frames.gradient_factor(frame, state[name], BUFFERS[name])
        return fields

    def _from_frame(self, fields: dict[str, Tensor], frame: Frame) -> dict[str, Tensor]:
        state = {"x": frames.points_from(frame, fields["x"])}
        for name in self.buffers:
            state[name] = fields[name] / frames.gradient_factor(frame, fields[name], BUFFERS[name])
        return state

    def _carry(self, state: State, fields: dict[str, Tensor], objective: Objective) -> State:
        return {"step": state["step"] + 1, "f": evaluate(objective, fields["x"][:, None, :])[:, 0]}
