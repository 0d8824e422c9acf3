"""The codec contract: a teacher's state <-> a token sequence, in a frame.

    codec = make_codec(teacher, problem, mode="in_context", frame="scale")
    enc = codec.encode(state, problem)       # enc.tokens (B, T, D), enc.frame, enc.state
    fields = codec.read(tokens_out)          # the learned fields, in enc's frame
    state = codec.decode(tokens_out, enc)    # a full state in original coordinates

T (`num_tokens`) and D (`token_dim`) are fixed by the teacher and its settings, the problem
family, its dimension and settings, and the mode. `read` takes the learned fields from the very
slots where `encode` wrote the current ones, so the identity map decodes to the input state:
the "do nothing" baseline. `to_frame` brings any state (a target s_k, say) into a frame,
`from_frame` undoes it, and `write` puts fields into tokens where `read` finds them.

Modes:
    in_context  problem tokens (`Problem.problem_tokens(frame)`) tell the network f, and no f
                value the step still needs is given: the network evaluates f itself.
    oracle      the f values at the points the step needs are computed here, at encode time,
                and given as tokens; problem tokens are left out where the step needs nothing
                else of f.
Frames (`blockwise.codec.frame`): with frame="scale" the codec normalizes into a
translation-and-scale frame computed from the input state, so a step is learned scale-free;
"affine" (the simplex codecs and CMA-ES) maps the current simplex to the standard simplex, or
CMA-ES's distribution to N(0, I), so a step of an affine-equivariant optimizer looks the same at
every k; "none" uses the identity.
Fields the network does not predict are bookkeeping, filled in by `decode`: counters, keys and
flags carried over from the encoded state, and quantities the step does not need from the
network (GD's f(x)) recomputed from the objective at the emulated point, never taken from a
block's output, so a stack's error cannot leak through them. Each codec's `bookkeeping` says
how.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor

from blockwise.codec import frame as frames
from blockwise.codec.layout import Layout, Segment
from blockwise.problems import Frame, Objective, Problem
from blockwise.teachers.base import State, Teacher, check_state

MODES = ("in_context", "oracle")
MAX_SET_ORDERS = 720
"""The most orders (m! for m points of a `Codec.vertex_set`) that `train.set_loss` scores,
each of them per example: m <= 6, a simplex in n <= 5."""


@dataclasses.dataclass(frozen=True, eq=False)
class Encoded:
    """An encoded state.

    Attributes:
        tokens: (B, T, D), in the frame.
        frame: the frame the tokens are in (the identity frame when the codec has frame="none").
        state: the state that was encoded, kept so `decode` can carry its bookkeeping fields.
        objective: the objective it was encoded on, for the bookkeeping `decode` recomputes.
    """

    tokens: Tensor
    frame: Frame
    state: State
    objective: Objective


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a learned field lives: the `slot` group of the `kind` tokens; shape excludes B."""

    kind: str
    slot: str
    shape: tuple[int, ...]


class Codec:
    """Base class. Subclasses define the layout, the frame, the inputs and the bookkeeping.

    Attributes:
        teacher, mode, dim, family: what the codec was built for.
        frame: the kind of frame encode normalizes into (make_codec's `frame`).
        learned_fields: the state fields the network predicts.
        bookkeeping: the other state fields -> how `decode` fills them (not emulated).
        placements: learned field -> its Placement.
        layout: the token layout (`slots`, `positions`, `describe`).
    """

    learned_fields: ClassVar[tuple[str, ...]]
    bookkeeping: ClassVar[dict[str, str]]
    index_meaning: ClassVar[str] = ""
    """What the index one-hot says, for codecs whose tokens carry one."""
    oracle_needs_problem: ClassVar[bool] = False
    """Whether oracle mode keeps the problem tokens (the step needs f beyond the oracle's)."""
    frame_kinds: ClassVar[tuple[str, ...]] = ("none", "scale")
    """The frame kinds the codec can encode in."""
    vertex_f_kinds: ClassVar[tuple[str, ...]] = ("own",)
    """Where the f values of the points a layer outputs come from between layers (see
    `SimplexCodec`): "own" is the layer's output, the only kind of codecs without such values."""
    vertex_set: ClassVar[tuple[str, ...]] = ()
    """Learned fields whose axis 1 lists points that `decode` re-sorts (a simplex's vertices
    and their f values, permuted together): the order a block outputs them in is free, which
    `train.set_loss` lets the pretraining loss say."""

    def __init__(
        self, teacher: Teacher, problem: Problem, mode: str, frame: str, vertex_f: str = "own"
    ):
        name = getattr(teacher, "name", type(teacher).__name__)
        if mode not in MODES:
            raise ValueError(f"{name} codec: unknown mode {mode!r}; expected one of {MODES}")
        if not isinstance(frame, str) or frame not in frames.KINDS:
            raise ValueError(f"{name} codec: frame must be one of {frames.KINDS}, got {frame!r}")
        if frame not in self.frame_kinds:
            raise ValueError(
                f"{name} codec: no {frame!r} frame (expected one of {self.frame_kinds}); the "
                "affine frame is for the optimizers that are affine-equivariant (nelder_mead, "
                "parallel_nelder_mead, cma_es)"
            )
        if vertex_f not in self.vertex_f_kinds:
            raise ValueError(
                f"{name} codec: vertex_f must be one of {self.vertex_f_kinds}, got {vertex_f!r}; "
                "'evaluated' is for the simplex codecs, whose vertices carry f values"
            )
        if not isinstance(problem, Problem):
            raise TypeError(
                f"{name} codec: problem must be a blockwise Problem (it gives n and the problem "
                f"token groups), got {type(problem).__name__}; a plain callable has no problem "
                "tokens to tell the network f"
            )
        self.teacher, self.mode, self.frame, self.vertex_f = teacher, mode, frame, vertex_f
        self.dim, self.family = problem.dim, problem.family
        self.has_problem_tokens = mode == "in_context" or self.oracle_needs_problem
        self._configure()
        # Group shapes from one instance, in the identity frame of the codec's kind (an affine
        # frame may add groups): a codec serves any batch of the same family.
        identity = Frame.identity(1, problem.dim, problem.params_dtype, frame == "affine")
        groups = problem[0].problem_tokens(identity) if self.has_problem_tokens else {}
        self.groups = {name: tuple(value.shape[1:]) for name, value in groups.items()}
        own = self._slots()
        clash = set(own) & set(self.groups)
        if clash:
            raise ValueError(f"{self.name} codec: problem groups {sorted(clash)} clash with slots")
        segments = [
            Segment(group, count, (group,), f"problem tokens {group!r}")
            for group, (count, _) in self.groups.items()
        ]
        slots = {**own, **{g: (w, f"problem group {g!r}") for g, (_, w) in self.groups.items()}}
        self.layout = Layout(segments + self._segments(), slots, self.index_meaning)
        self.placements = self._placements()

    # ---------------------------------------------------------------- what subclasses define

    def _configure(self) -> None:
        """Read what the layout needs from the teacher; runs before the layout is built."""

    def _slots(self) -> dict[str, tuple[int, str]]:
        """The codec's slot groups in order, name -> (width, meaning)."""
        raise NotImplementedError

    def _segments(self) -> list[Segment]:
        """The codec's tokens, after the problem tokens."""
        raise NotImplementedError

    def _placements(self) -> dict[str, Placement]:
        """Learned field -> where encode writes it and read finds it."""
        raise NotImplementedError

    def _inputs(self, state: State, objective: Objective) -> dict[str, Tensor]:
        """What encode computes beyond the state (samples, trial points, f values, gradients),
        in original coordinates."""
        return {}

    def _frame(self, state: State, inputs: dict[str, Tensor]) -> Frame:
        raise NotImplementedError

    def _put_inputs(
        self, tokens: Tensor, state: State, inputs: dict[str, Tensor], frame: Frame
    ) -> None:
        """Write the input-only quantities into tokens, in place."""

    def _to_frame(self, state: State, frame: Frame) -> dict[str, Tensor]:
        raise NotImplementedError

    def _from_frame(self, fields: dict[str, Tensor], frame: Frame) -> dict[str, Tensor]:
        raise NotImplementedError

    def _carry(self, state: State, fields: dict[str, Tensor], objective: Objective) -> State:
        """The bookkeeping fields of the state after the step, from the encoded `state`, the
        step's learned `fields` (original coordinates) and the objective."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the contract

    @property
    def name(self) -> str:
        return self.teacher.name

    @property
    def framed(self) -> bool:
        """Whether encode normalizes into a frame (any kind but "none")."""
        return self.frame != "none"

    @property
    def num_tokens(self) -> int:
        """T."""
        return self.layout.num_tokens

    @property
    def token_dim(self) -> int:
        """D."""
        return self.layout.token_dim

    @property
    def slots(self) -> dict[str, slice]:
        """Slot group name -> slice of the D slots."""
        return self.layout.slots

    @property
    def positions(self) -> dict[str, slice]:
        """Token kind -> slice of the T tokens."""
        return self.layout.positions

    def encode(self, state: State, objective: Objective) -> Encoded:
        """Tokens (B, T, D) of `state` on `objective`, in the frame of `state`."""
        state = self.check_state(state)
        like = state[self.learned_fields[0]]
        batch = like.shape[0]
        self._check_objective(objective, batch)
        inputs = self._inputs(state, objective)
        if self.framed:
            frame = self._frame(state, inputs)
        else:
            frame = frames.identity(batch, self.dim, like)
        tokens = self.layout.blank(batch, like)
        if self.has_problem_tokens:
            self._put_problem_tokens(tokens, objective, frame)
        self._put_fields(tokens, self._to_frame(state, frame))
        self._put_inputs(tokens, state, inputs, frame)
        return Encoded(tokens, frame, state, objective)

    def read(self, tokens: Tensor) -> dict[str, Tensor]:
        """The learned fields in the frame, from tokens (B, T, D): field -> (B, ...)."""
        self._check_tokens(tokens)
        return {
            name: self.layout.take(tokens, p.kind, p.slot).reshape((tokens.shape[0],) + p.shape)
            for name, p in self.placements.items()
        }

    def write(self, tokens: Tensor, fields: dict[str, Tensor]) -> Tensor:
        """A copy of tokens (B, T, D) with the learned fields (in the frame) where `read` finds
        them: `write(enc.tokens, to_frame(s_next, enc.frame))` is what a perfect block outputs
        at those slots."""
        self._check_tokens(tokens)
        self._check_fields(fields, tokens.shape[0])
        tokens = tokens.clone()
        self._put_fields(tokens, fields)
        return tokens

    def to_frame(self, state: State, frame: Frame) -> dict[str, Tensor]:
        """The learned fields of `state` (any state, e.g. a target) in `frame`."""
        self._check_fields(state, frame.centre.shape[0])
        return self._to_frame(state, frame)

    def from_frame(self, fields: dict[str, Tensor], frame: Frame) -> dict[str, Tensor]:
        """The inverse of `to_frame`: learned fields in `frame` -> original coordinates."""
        self._check_fields(fields, frame.centre.shape[0])
        return self._from_frame(fields, frame)

    def decode(self, tokens: Tensor, enc: Encoded) -> State:
        """The full state after the step from output tokens (B, T, D): the learned fields read
        and taken out of enc's frame, the bookkeeping fields from enc.state."""
        fields = self._from_frame(self.read(tokens), enc.frame)
        state = {**self._carry(enc.state, fields, enc.objective), **fields}
        return {name: state[name] for name in self.teacher.state_fields}

    def describe(self) -> str:
        """A printable table of the token layout, the learned fields and the bookkeeping."""
        lines = [
            f"{self.name} codec ({type(self).__name__}): mode={self.mode}, frame={self.frame}, "
            f"family={self.family}, n={self.dim}",
            self.layout.describe(),
            "learned fields",
        ]
        for name, p in self.placements.items():
            lines.append(f"  {name:<10} <- {p.kind} tokens, {p.slot!r} slots")
        lines.append("bookkeeping (not emulated)")
        lines += [f"  {name:<10} {how}" for name, how in self.bookkeeping.items()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name}, mode={self.mode!r}, frame={self.frame!r}, "
            f"family={self.family!r}, n={self.dim}, T={self.num_tokens}, D={self.token_dim})"
        )

    # ---------------------------------------------------------------- helpers

    def _put_fields(self, tokens: Tensor, fields: dict[str, Tensor]) -> None:
        batch = tokens.shape[0]
        for name, p in self.placements.items():
            values = fields[name].reshape((batch,) + self.layout.shape(p.kind, p.slot))
            self.layout.put(tokens, p.kind, p.slot, values)

    def _put_problem_tokens(self, tokens: Tensor, problem: Problem, frame: Frame) -> None:
        # Problem parameters live in float64 on the CPU: describe f there, then cast.
        home = torch.empty(0, dtype=problem.params_dtype)
        groups = problem.problem_tokens(frames.cast(frame, home))
        shapes = {name: tuple(value.shape[1:]) for name, value in groups.items()}
        if shapes != self.groups:
            raise ValueError(
                f"{self.name} codec: {problem!r} gives problem token groups {shapes}, but the "
                f"codec was built for {self.groups}; a codec serves one family, dimension and "
                "settings (least_squares' n_context sets its token count)"
            )
        for name, value in groups.items():
            self.layout.put(tokens, name, name, value.to(tokens))

    def _check_objective(self, objective: Objective, batch: int) -> None:
        if self.has_problem_tokens and not isinstance(objective, Problem):
            hint = "" if self.oracle_needs_problem else "; mode='oracle' takes a plain callable"
            raise TypeError(
                f"{self.name} codec: mode {self.mode!r} needs a blockwise Problem, whose problem "
                f"tokens tell the network f, got {type(objective).__name__}{hint}"
            )
        if isinstance(objective, Problem):
            if objective.family != self.family or objective.dim != self.dim:
                raise ValueError(
                    f"{self.name} codec: built for family {self.family!r} in n = {self.dim}, "
                    f"got {objective!r}"
                )
            if objective.batch_size != batch:
                raise ValueError(
                    f"{self.name} codec: the problem has {objective.batch_size} instances, "
                    f"the state {batch}"
                )

    def check_state(self, state: State) -> State:
        """Raise a ValueError naming the field unless `state` is a whole state of the teacher
        with the codec's shapes; returns it."""
        state = check_state(state, self.teacher)
        first = state[self.learned_fields[0]]
        if not isinstance(first, Tensor) or first.ndim < 1:
            raise ValueError(
                f"{self.name} codec: state[{self.learned_fields[0]!r}] must be a tensor (B, ...)"
            )
        batch = first.shape[0]
        self._check_fields(state, batch)
        for name in self.bookkeeping:
            value = state[name]
            if not isinstance(value, Tensor) or tuple(value.shape) != (batch,):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{self.name} codec: state[{name!r}] must have shape ({batch},), got {got}"
                )
        return state

    def _check_fields(self, fields: dict[str, Tensor], batch: int) -> None:
        """Raise a ValueError naming the field unless every learned field is there, floating,
        of one dtype and of shape (batch, ...) as placed."""
        if not isinstance(fields, dict):
            raise TypeError(f"{self.name} codec: expected a dict of tensors, got {fields!r}")
        missing = set(self.learned_fields) - set(fields)
        if missing:
            raise ValueError(
                f"{self.name} codec: missing field(s) {sorted(missing)}; "
                f"the learned fields are {list(self.learned_fields)}"
            )
        dtype = fields[self.learned_fields[0]].dtype
        for name, p in self.placements.items():
            value, shape = fields[name], (batch,) + p.shape
            ok = isinstance(value, Tensor) and value.is_floating_point() and value.dtype == dtype
            if not ok or tuple(value.shape) != shape:
                got = (
                    f"{value.dtype} {tuple(value.shape)}"
                    if isinstance(value, Tensor)
                    else type(value).__name__
                )
                raise ValueError(
                    f"{self.name} codec: field {name!r} must be a floating tensor of shape "
                    f"{shape} (B, ...) for n = {self.dim}, in one dtype with the others, got {got}"
                )

    def _check_tokens(self, tokens: Tensor) -> None:
        shape = (self.num_tokens, self.token_dim)
        if not isinstance(tokens, Tensor) or tokens.ndim != 3 or tuple(tokens.shape[1:]) != shape:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(
                f"{self.name} codec: tokens must have shape (B, T, D) = (B, {shape[0]}, "
                f"{shape[1]}), got {got}"
            )
