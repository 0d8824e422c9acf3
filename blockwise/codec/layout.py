"""Token layout: which tokens a codec writes, in which order, and which slots each fills.

A layout is a sequence of segments, each a run of `count` tokens of one kind, and a partition of
the D slots of a token vector into named slot groups. Every layout starts with three groups of
its own:

    type   one flag per token kind, in segment order (a token has exactly one flag set)
    one    the constant 1, on every token (an affine map inside attention needs it)
    index  a one-hot position within a kind, where order matters (NM rank, row of C)

then the codec's groups (point coordinates, f values, one group per other state quantity, one
per problem token group). A token fills only the groups its segment names; the rest stay 0.
Keeping each kind of quantity in slots of its own matters: attention reads every token's slots
through the same weights, so two quantities in shared slots cannot be told apart by them.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of tokens of one kind.

    Attributes:
        kind: the token kind; also the name of its type flag.
        count: tokens in the run.
        slots: the slot groups these tokens fill (besides type, one and index).
        meaning: one line for `describe`.
        index: per token, the position of its index one-hot, or None for no index.
    """

    kind: str
    count: int
    slots: tuple[str, ...]
    meaning: str
    index: tuple[int, ...] | None = None


class Layout:
    """Segments and slot groups, with positions resolved.

    Attributes:
        segments: the segments in token order.
        slots: slot group name -> slice of the D slots; `slot_meanings` says what each holds.
        positions: token kind -> slice of the T tokens.
    """

    def __init__(
        self, segments: list[Segment], slots: dict[str, tuple[int, str]], index_meaning: str
    ):
        """`slots`: the codec's own groups in order, name -> (width, meaning); `index_meaning`
        says what the index one-hot means, where some segment has one."""
        kinds = [s.kind for s in segments]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"layout: token kinds must be distinct, got {kinds}")
        indexed = [i for s in segments if s.index is not None for i in s.index]
        groups = {
            "type": (len(segments), "one flag per token kind: " + ", ".join(kinds)),
            "one": (1, "the constant 1"),
        }
        if indexed:
            groups["index"] = (max(indexed) + 1, index_meaning)
        clash = set(groups) & set(slots)
        if clash:
            raise ValueError(f"layout: slot names {sorted(clash)} are reserved")
        groups.update(slots)
        self.segments = segments
        self._by_kind = {s.kind: s for s in segments}
        self.slots: dict[str, slice] = {}
        self.slot_meanings: dict[str, str] = {}
        start = 0
        for name, (width, meaning) in groups.items():
            self.slots[name] = slice(start, start + width)
            self.slot_meanings[name] = meaning
            start += width
        self.positions: dict[str, slice] = {}
        start = 0
        for segment in segments:
            unknown = set(segment.slots) - set(slots)
            if unknown:
                raise ValueError(f"layout: segment {segment.kind!r} names unknown slots {unknown}")
            self.positions[segment.kind] = slice(start, start + segment.count)
            start += segment.count
        self._template = self._make_template()

    @property
    def num_tokens(self) -> int:
        """T."""
        return sum(s.count for s in self.segments)

    @property
    def token_dim(self) -> int:
        """D."""
        return self.slots[next(reversed(self.slots))].stop

    def _make_template(self) -> Tensor:
        """(T, D) float64: the type flags, the constant 1 and the index one-hots."""
        template = torch.zeros(self.num_tokens, self.token_dim, dtype=torch.float64)
        template[:, self.slots["one"]] = 1
        for flag, segment in enumerate(self.segments):
            rows = self.positions[segment.kind]
            template[rows, self.slots["type"].start + flag] = 1
            if segment.index is not None:
                index = torch.tensor(segment.index) + self.slots["index"].start
                template[torch.arange(rows.start, rows.stop), index] = 1
        return template

    def blank(self, batch: int, like: Tensor) -> Tensor:
        """(B, T, D) tokens with only the type flags, the 1s and the index one-hots set, in the
        dtype and on the device of `like`."""
        return self._template.to(like).expand(batch, -1, -1).clone()

    def put(self, tokens: Tensor, kind: str, slot: str, values: Tensor) -> None:
        """Write values (B, count, width) into the `slot` group of the `kind` tokens, in place."""
        rows, cols = self._where(kind, slot)
        target = tokens[:, rows, cols]
        if values.shape != target.shape:
            raise ValueError(
                f"layout: {kind!r} tokens' {slot!r} slots take shape {tuple(target.shape)}, "
                f"got {tuple(values.shape)}"
            )
        tokens[:, rows, cols] = values

    def shape(self, kind: str, slot: str) -> tuple[int, int]:
        """(count, width) of the `slot` group of the `kind` tokens."""
        rows, cols = self._where(kind, slot)
        return rows.stop - rows.start, cols.stop - cols.start

    def take(self, tokens: Tensor, kind: str, slot: str) -> Tensor:
        """The `slot` group of the `kind` tokens, (B, count, width)."""
        rows, cols = self._where(kind, slot)
        return tokens[:, rows, cols]

    def _where(self, kind: str, slot: str) -> tuple[slice, slice]:
        if slot not in self._by_kind[kind].slots:
            raise ValueError(f"layout: {kind!r} tokens have no {slot!r} slots")
        return self.positions[kind], self.slots[slot]

    def describe(self) -> str:
        """The layout as two tables: tokens (positions, kind, slots filled) and slots."""
        lines = [f"tokens (T = {self.num_tokens})"]
        lines.append(f"  {'positions':<10} {'kind':<16} {'slots':<28} meaning")
        for segment in self.segments:
            slots = " ".join(("index",) * (segment.index is not None) + segment.slots)
            span = _span(self.positions[segment.kind])
            lines.append(f"  {span:<10} {segment.kind:<16} {slots:<28} {segment.meaning}")
        lines.append(f"slots (D = {self.token_dim})")
        for name, where in self.slots.items():
            lines.append(f"  {_span(where):<10} {name:<16} {self.slot_meanings[name]}")
        return "\n".join(lines)


def _span(s: slice) -> str:
    """A slice as 'i' or 'i:j'."""
    return str(s.start) if s.stop == s.start + 1 else f"{s.start}:{s.stop}"
