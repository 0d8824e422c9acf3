"""Capture: run a stack layer by layer and keep, by hook name, what its blocks compute.

TransformerLens' `run_with_cache` is the model: forward hooks on the identity modules that
every block carries (`blockwise.model.block`), names that say where, and only the names asked
for are kept, in float32, so that thousands of problems fit in memory. Each layer's tokens go
through its block in chunks of `chunk` problems, so what a block holds while it runs is bounded
too.

Hook names, per layer k = 1..L (i = k - 1; a looped stack's one block serves every layer, so
names follow layers, not modules):
    blocks.{i}.hook_resid_pre     (B, T, width) the block's input, read_in(tokens)
    blocks.{i}.attn.hook_pattern  (B, heads, T_query, T_key) softmax weights; in a linear-
                                  attention block the raw scores q.k, not a distribution
    blocks.{i}.attn.hook_z        (B, T, width) the heads' outputs, concatenated, before the
                                  output projection (TransformerLens' hook_z)
    blocks.{i}.hook_attn_out      (B, T, width) attention's contribution to the stream
    blocks.{i}.hook_resid_mid     (B, T, width) the stream between attention and MLP
    blocks.{i}.hook_mlp_out       (B, T, width) the MLP's contribution (blocks with an MLP)
    blocks.{i}.hook_resid_post    (B, T, width) the block's output

    states, cache = run_with_cache(stack, problem, s0)
    cache["blocks.0.hook_resid_post"].shape      # (B, T, width)
    states, cache = run_with_cache(stack, problem, s0, layers=[1, 8, 64])  # those layers' alone
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from blockwise.codec import Encoded
from blockwise.model import Block, ReadIO
from blockwise.problems import Problem
from blockwise.stack import Stack
from blockwise.teachers import State

HOOKS = (
    "hook_resid_pre",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
)
CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class Captured:
    """One layer run with hooks.

    Attributes:
        enc: the layer's input state, encoded (tokens in its frame, the frame, the state).
        cache: hook name (short, e.g. "hook_resid_post") -> float32 tensor, problems first.
        state: the decoded state the layer outputs, as `Stack.layer` gives it.
    """

    enc: Encoded
    cache: dict[str, Tensor]
    state: State


def _keep(store: list[Tensor]):
    def hook(module, args, output=None):
        value = args[0] if output is None else output
        store.append(value.detach().to(torch.float32, copy=True))

    return hook


@contextlib.contextmanager
def hooked(block: Block, hooks: tuple[str, ...]):
    """Hooks on `block` that append, per call, a float32 copy of each named point to
    store[name]; yields store (name -> list of tensors). Removed on exit."""
    store: dict[str, list[Tensor]] = {name: [] for name in hooks}
    handles = []
    for name in hooks:
        if name not in HOOKS:
            raise ValueError(f"capture: unknown hook {name!r}; expected some of {HOOKS}")
        if name == "hook_resid_pre":
            handles.append(block.register_forward_pre_hook(_keep(store[name])))
        elif name == "attn.hook_z":
            handles.append(block.attn.out.register_forward_pre_hook(_keep(store[name])))
        elif name == "hook_mlp_out" and block.mlp is None:
            continue
        else:
            handles.append(block.get_submodule(name).register_forward_hook(_keep(store[name])))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture_layer(
    stack: Stack,
    k: int,
    state: State,
    problem: Problem,
    hooks: tuple[str, ...] = HOOKS,
    chunk: int = CHUNK,
) -> Captured:
    """Layer k (1-indexed) of `stack` on `state`, as `Stack.layer` runs it, with the `hooks`
    kept for every problem."""
    enc = stack.codec.encode(state, problem)
    block = stack.block(k)
    tokens = enc.tokens.to(stack.readio.read_in.weight.dtype)
    with hooked(block, hooks) as store:
        out = torch.cat([stack.readio.layer(block, part) for part in tokens.split(chunk)])
    cache = {name: torch.cat(parts) for name, parts in store.items() if parts}
    return Captured(enc, cache, stack.codec.decode(out.to(enc.tokens.dtype), enc))


@torch.no_grad()
def walk(
    stack: Stack,
    state: State,
    problem: Problem,
    layers: Sequence[int],
    hooks: tuple[str, ...] = HOOKS,
    chunk: int = CHUNK,
) -> Iterator[Captured]:
    """The stack's rollout from `state` through the deepest of `layers` (1-indexed,
    ascending), yielding each of those layers captured: the layers between run without hooks
    (in the same chunks, so a layer's input is the same whichever layers are kept), and one
    layer's cache is held at a time."""
    kept = set(layers)
    for k in range(1, max(layers) + 1):
        captured = capture_layer(stack, k, state, problem, hooks if k in kept else (), chunk)
        if k in kept:
            yield captured
        state = captured.state


def run_with_cache(
    stack: Stack,
    problem: Problem,
    state: State,
    layers: int | Sequence[int] | None = None,
    hooks: tuple[str, ...] = HOOKS,
    chunk: int = CHUNK,
) -> tuple[list[State], dict[str, Tensor]]:
    """The stack's rollout from `state` and its cache: (the states after each kept layer,
    {"blocks.{k-1}.{hook}": tensor} for each kept layer k). `layers` is how many layers to
    run and keep (default the stack's depth) or which ones, ascending: the stack runs through
    the deepest and keeps those. The cache holds a tensor per kept layer and hook; `walk`
    yields one layer at a time."""
    count = stack.depth if layers is None else layers
    kept = range(1, count + 1) if isinstance(count, int) else sorted(count)
    states, cache = [], {}
    for k, captured in zip(kept, walk(stack, state, problem, kept, hooks, chunk), strict=True):
        cache.update({f"blocks.{k - 1}.{name}": v for name, v in captured.cache.items()})
        states.append(captured.state)
    return states, cache


def beyond_slots(readio: ReadIO) -> Tensor | None:
    """(width, r) an orthonormal basis of the stream's directions the codec's slots do not
    use: those outside the read-in's columns and the read-out's rows. For the read-in and
    read-out as they start (the identity on the first token_dim dimensions) it is the other
    dimensions, as they are; None when there are none (width == token_dim)."""
    w_in, w_out = readio.read_in.weight.detach(), readio.read_out.weight.detach()
    width, dim = w_in.shape
    eye = torch.eye(width, dim, dtype=w_in.dtype, device=w_in.device)
    if torch.equal(w_in, eye) and torch.equal(w_out, eye.T):
        basis = torch.eye(width, dtype=w_in.dtype, device=w_in.device)[:, dim:]
    else:
        used = torch.cat([w_in, w_out.T], 1).double()
        u, s, _ = torch.linalg.svd(used, full_matrices=True)
        rank = int((s > 1e-10 * s.amax()).sum())
        basis = u[:, rank:].to(w_in.dtype)
    return basis if basis.shape[1] else None


def features(stream: Tensor, basis: Tensor | None = None) -> Tensor:
    """Per-problem features (B, T r) from a stream (B, T, width): every token's dimensions,
    projected on `basis` (width, r) if given (e.g. `beyond_slots`)."""
    if basis is not None:
        stream = stream @ basis.to(stream)
    return stream.reshape(stream.shape[0], -1)
