"""`blockwise probe DIR`: every instrument run on one saved stack, its numbers, figures and
report written to one directory.

    from blockwise.probes import probe
    results = probe("checkpoints/quickstart")      # writes runs/probes/quickstart/
    results["probes"]["f_reflected"]["beyond_slots"]["r2"]    # per probed layer
    results["layers"]                                           # which: [1, 2, 3, 4, 5]

The stack runs from fresh problems (`seed`, never the recipe's training or validation seed),
a quarter of them held out: probes are fitted on the others and scored on those, and the
attention statistics, the counterfactual and the similarities are taken on them. Layer k is
probed on the state it receives in the stack's own rollout, the untrained control on the same
states. Every per-layer instrument (probes, attention, similarities) reads the layers probed
alone (`layers`, default `default_layers`: every layer of a stack up to 16 deep, 1, 2, 4, ...
and the last of a deeper one), the stack run through the deepest of them. The counterfactual
runs on to the last layer; the out-of-distribution rollouts go at most `ood.MORE_STEPS` past
it, on DEEP_OOD_PROBLEMS problems for a stack deeper than EVERY_LAYER.
Out under `out` (default runs/probes/<name>; never inside a checkpoint directory):
    probes.json     every number below, strict JSON (NaN as null)
    report.md       the instruments' tables and, last, the signs found
    probe_scores, attention, counterfactual, similarity, ood    figures, PNG and PDF
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from blockwise import problems as families
from blockwise.build import new_block
from blockwise.checkpoints import load_stack, read_config
from blockwise.config import Recipe, recipe_from_dict
from blockwise.files import write_atomic
from blockwise.jsonable import to_jsonable
from blockwise.model import Block
from blockwise.probes.attention import attention_stats, mean_pattern, query_tokens
from blockwise.probes.capture import beyond_slots, capture_layer, walk
from blockwise.probes.counterfactual import counterfactual
from blockwise.probes.ood import out_of_distribution
from blockwise.probes.quantities import Quantity, teacher_quantities
from blockwise.probes.report import report, signs
from blockwise.probes.similarity import (
    block_similarity,
    cka_matrix,
    interchange,
    same_input_updates,
)
from blockwise.probes.sites import (
    SITES,
    constant_in_frame,
    probe_layer,
    site_features,
    site_tokens,
)
from blockwise.rollout import rollout
from blockwise.stack import Stack

SEED = 1009
PROBLEMS = 4096
HELD_OUT = 0.25
SIMILARITY_ROWS = 1024
OOD_PROBLEMS = 1024
DEEP_OOD_PROBLEMS = 256
"""The out-of-distribution problems of a stack deeper than EVERY_LAYER: every condition runs
it through every layer, and a 96-layer stack's seven oracle-mode conditions on OOD_PROBLEMS
problems took as long as all the other instruments together (80 s on one core)."""
PROBED = ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_resid_post")
"""The hooks the instruments read; the others are not kept."""
EVERY_LAYER = 16
"""Stacks up to this deep are probed at every layer, deeper ones at `default_layers`' few: a
probed layer costs a capture of the untrained stack and seven ridge probes on thousands of
problems, while a layer passed through costs one block."""


def default_layers(depth: int) -> list[int]:
    """Every layer of a stack up to EVERY_LAYER deep; else 1, 2, 4, ... (powers of two below
    the depth) and the last."""
    if depth <= EVERY_LAYER:
        return list(range(1, depth + 1))
    return [1 << i for i in range(depth.bit_length()) if 1 << i < depth] + [depth]


def ood_problems(depth: int, problems: int) -> int:
    """How many problems each out-of-distribution condition runs: OOD_PROBLEMS, or
    DEEP_OOD_PROBLEMS for a stack deeper than EVERY_LAYER; never more than `problems`."""
    return min(OOD_PROBLEMS if depth <= EVERY_LAYER else DEEP_OOD_PROBLEMS, problems)


def parse_layers(text: str) -> list[int]:
    """`--layers 1,2,4,8` as [1, 2, 4, 8]; the range is checked by `select_layers`."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers: expected layer numbers separated by commas, e.g. 1,2,4,8; "
                         f"got {text[:40]!r}") from None


def select_layers(layers: Sequence[int] | None, depth: int) -> list[int]:
    """The layers to probe, ascending: `layers` checked (ints in 1..depth, none twice, at least
    one), or `default_layers(depth)`."""
    if layers is None:
        return default_layers(depth)
    layers = list(layers)
    bad = [k for k in layers if isinstance(k, bool) or not isinstance(k, int)
           or not 1 <= k <= depth]
    twice = [k for k in layers if layers.count(k) > 1]
    if bad or twice or not layers:
        why = (f"{bad[0]!r} is not one" if bad else f"{twice[0]} is given twice" if twice
               else "none given")
        raise ValueError(f"probe: layers must be distinct layer numbers in 1..{depth}; {why}")
    return sorted(layers)


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory of `path`: a run directory's checkpoint/, or `path`."""
    path = Path(path)
    return path / "checkpoint" if (path / "checkpoint").is_dir() else path


def stack_name(checkpoint: Path) -> str:
    """The name a checkpoint's probes go by: its directory's, or its run directory's."""
    where = checkpoint.resolve()
    return where.parent.name if where.name == "checkpoint" else where.name


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def output_dir(checkpoint: Path, given: str | Path | None) -> Path:
    """Where the files go: `given`, or runs/probes/<stack_name>. Refused inside a checkpoint
    directory (it holds its two files and nothing else) or a directory that holds one
    (checkpoints/, where every folder is read as a shipped stack; a run directory)."""
    out = Path(given) if given is not None else Path("runs") / "probes" / stack_name(checkpoint)
    for where in (out.resolve(), *out.resolve().parents):
        held = where.is_dir() and any(_is_checkpoint(p) for p in where.iterdir() if p.is_dir())
        if _is_checkpoint(where) or held:
            what = "is a checkpoint directory" if _is_checkpoint(where) else "holds saved stacks"
            raise ValueError(f"--out {out}: {where} {what}; probes are written elsewhere "
                             "(default runs/probes/<name>)")
    return out


def untrained(stack: Stack, recipe: Recipe) -> Stack:
    """The control: the stack's codec and read-in/read-out with its blocks as initialized
    before training (`build.new_block`'s seeded weights), the global RNG left as it was."""
    with torch.random.fork_rng():
        blocks = [new_block(recipe, k) for k in range(1, len(stack.blocks) + 1)]
    like = stack.readio.read_in.weight
    blocks = [b.to(dtype=like.dtype, device=like.device).eval() for b in blocks]
    return Stack(stack.codec, stack.readio, blocks, stack.looped,
                 stack.depth if stack.looped else None)


def token_labels(codec) -> list[str]:
    """A short name per token: its kind, numbered within the kind where there are several."""
    labels = []
    for segment in codec.layout.segments:
        many = segment.count > 1
        labels += [f"{segment.kind}{i}" if many else segment.kind for i in range(segment.count)]
    return labels


def describe(stack: Stack, recipe: Recipe) -> dict:
    """What the report says of the stack: teacher, problems, codec, shapes, the sites' tokens."""
    codec, block, basis = stack.codec, stack.block(1), beyond_slots(stack.readio)
    width = stack.readio.read_in.weight.shape[0]
    labels = token_labels(codec)
    return {
        "teacher": codec.teacher.name, "family": recipe.problem.family,
        "dim": recipe.problem.dim, "mode": codec.mode, "frame": codec.frame,
        "depth": stack.depth, "looped": stack.looped, "width": width,
        "token_dim": codec.token_dim, "tokens": labels, "attention": block.attn.kind,
        "heads": block.attn.heads, "mlp": block.mlp is not None,
        "beyond_slots_dims": 0 if basis is None else basis.shape[1],
        "site_tokens": [labels[t] for t in site_tokens(codec, width)],
    }


def probe(
    path: str | Path,
    out: str | Path | None = None,
    problems: int = PROBLEMS,
    seed: int = SEED,
    swap_layer: int | None = None,
    layers: Sequence[int] | None = None,
    write: bool = True,
) -> dict:
    """Run every instrument on the stack saved at `path` (a checkpoint or a run directory) and,
    with `write`, write probes.json, report.md and the figures to `out`; returns the results
    (what probes.json holds).

    Args:
        problems: fresh problems to run (a quarter held out), at least 64.
        seed: their seed; seed + 1 gives the counterfactual's objectives and seed + 2 the
            out-of-distribution problems. None of them may be the recipe's training or
            validation seed.
        swap_layer: the layer at which the counterfactual swaps the objective (default
            depth // 2 + 1); the stack then runs on to its last layer.
        layers: the layers the probes, attention statistics and similarities read (distinct,
            in 1..depth; default `default_layers`).
    """
    started = time.perf_counter()
    checkpoint = checkpoint_dir(path)
    config = read_config(checkpoint)
    target = output_dir(checkpoint, out) if write else None
    recipe = recipe_from_dict(config["recipe"])
    if isinstance(problems, bool) or not isinstance(problems, int) or problems < 64:
        raise ValueError(f"probe: problems must be an int >= 64, got {problems!r}")
    taken = {recipe.data.train_seed, recipe.data.val_seed}
    if taken & {seed, seed + 1, seed + 2}:
        raise ValueError(f"probe: seeds {seed} to {seed + 2} include the recipe's training or "
                         f"validation seed ({sorted(taken)}); probes use held-out problems")
    depth = config["depth"]
    swap = depth // 2 + 1 if swap_layer is None else swap_layer
    if not 1 <= swap <= depth:
        raise ValueError(f"probe: swap_layer must be in 1..{depth}, got {swap}")
    probed = select_layers(layers, depth)
    stack = load_stack(checkpoint)
    control = untrained(stack, recipe)
    own = recipe.problem
    problem = families.make(own.family, problems, own.dim, seed, **own.settings)
    x0 = problem.sample_x0(seed=seed, radius=own.x0_radius)
    train = torch.arange(problems) < problems - int(problems * HELD_OUT)
    test = torch.nonzero(~train)[:, 0]
    per_layer, updates, pooled = _probe_layers(stack, control, problem, x0, train, seed, probed)

    test_problem = problem[test]
    traj = rollout(stack.codec.teacher, test_problem, x0[test], probed[-1])
    other = families.make(own.family, len(test), own.dim, seed + 1, **own.settings)
    results = {
        "checkpoint": str(checkpoint),
        "name": stack_name(checkpoint),
        "stack": describe(stack, recipe),
        "problems": {"train": int(train.sum()), "test": len(test), "seed": seed},
        "layers": probed,
        "rows": [layer["rows"] for layer in per_layer],
        "probes": _by_quantity(per_layer),
        "attention": {
            "kind": stack.block(1).attn.kind,
            "queries": [token_labels(stack.codec)[t] for t in query_tokens(stack.codec)],
            "layers": [layer["attention"] for layer in per_layer],
            "maps": {who: [layer["maps"][who].tolist() for layer in per_layer]
                     for who in ("trained", "control")},
        },
        "counterfactual": counterfactual(stack, test_problem, other, traj[0], swap, depth),
        "ood": out_of_distribution(stack, recipe, ood_problems(depth, problems), seed + 2),
        "similarity": _similarity(stack, control, updates, pooled, test_problem, traj, probed),
    }
    if target is not None:
        results["out"] = str(target)
    results = to_jsonable(results)
    results["signs"] = signs(results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    if write:
        _write(results, target, test_problem, other)
    return results


def _probe_layers(
    stack: Stack, control: Stack, problem, x0: torch.Tensor, train: torch.Tensor, seed: int,
    layers: list[int],
) -> tuple[list[dict], dict[str, list], torch.Tensor]:
    """Probed layer by probed layer (`layers`) on the stack's rollout from x0: the probes, the
    attention statistics, and what the similarities need (each layer's update to the stream
    on the first held-out problems, and stream inputs pooled from the probed layers). One
    layer's captures are held at a time."""
    codec, kind = stack.codec, stack.block(1).attn.kind
    test = torch.nonzero(~train)[:, 0]
    rows = test[:SIMILARITY_ROWS]
    share = -(-len(rows) // len(layers))
    shuffle = torch.randperm(int(train.sum()), generator=torch.Generator().manual_seed(seed))
    basis = beyond_slots(stack.readio)
    per_layer, updates, pooled = [], {"trained": [], "control": []}, []
    state = codec.teacher.init(problem, x0)
    for i, (k, mine) in enumerate(zip(layers, walk(stack, state, problem, layers, PROBED),
                                      strict=True)):
        # The untrained control is fed the state the trained stack gave this layer.
        theirs = capture_layer(control, k, mine.enc.state, problem, PROBED)
        quantities = teacher_quantities(mine.enc, problem, codec)
        constant = {name: constant_in_frame(q) for name, q in quantities.items()}
        probed = {name: q for name, q in quantities.items() if constant[name] is None}
        scores, counts = probe_layer(
            site_features(mine, codec, basis), site_features(theirs, codec, basis),
            probed, train, shuffle,
        )
        held = {name: Quantity(q.values[test], q.meaning, q.classes)
                for name, q in quantities.items()}
        patterns = {"trained": mine.cache["attn.hook_pattern"][test],
                    "control": theirs.cache["attn.hook_pattern"][test]}
        per_layer.append({
            "quantities": {name: (q.meaning, q.classes, q.values.shape[1:])
                           for name, q in quantities.items()},
            "constant": constant,
            "scores": scores,
            "rows": counts,
            "attention": {who: attention_stats(p, codec, held, kind)
                          for who, p in patterns.items()},
            "maps": {who: mean_pattern(p, kind) for who, p in patterns.items()},
        })
        for who, captured in (("trained", mine), ("control", theirs)):
            cache = captured.cache
            updates[who].append((cache["hook_resid_post"] - cache["hook_resid_pre"])[rows])
        pooled.append(mine.cache["hook_resid_pre"][rows[i * share : (i + 1) * share]])
    return per_layer, updates, torch.cat(pooled)


def _compared_blocks(stack: Stack, layers: list[int]) -> list[int]:
    """The layers whose blocks the similarities compare: the probed ones', or the one block of
    a looped stack (layer 1's)."""
    return [1] if stack.looped else layers


def _similarity(stack: Stack, control: Stack, updates: dict[str, list], pooled: torch.Tensor,
                problem, traj, layers: list[int]) -> dict:
    """`similarity`'s measures on the probed layers, for the trained stack and the untrained
    control."""
    stacks = {"trained": stack, "control": control}
    blocks: dict[str, list[Block]] = {
        who: [s.block(k) for k in _compared_blocks(stack, layers)] for who, s in stacks.items()
    }
    return {
        "looped": stack.looped,
        "blocks_of_layers": _compared_blocks(stack, layers),
        "interchange": {who: interchange(s, problem, traj, layers) for who, s in stacks.items()},
        "updates": {who: cka_matrix(u) for who, u in updates.items()},
        "same_inputs": {who: cka_matrix(same_input_updates(b, pooled))
                        for who, b in blocks.items()},
        "blocks": {who: block_similarity(b) for who, b in blocks.items()},
    }


def _by_quantity(layers: list[dict]) -> dict:
    """The per-layer results regrouped: quantity -> its description, whether it is constant in
    the frame, and site -> score -> [per probed layer] (None where it was not probed)."""
    out = {}
    for name, (meaning, classes, shape) in layers[0]["quantities"].items():
        if classes is not None:  # the classes seen at any layer
            classes = {code: label for layer in layers
                       for code, label in layer["quantities"][name][1].items()}
        entry = {
            "meaning": meaning,
            "kind": "classes" if classes is not None else "quantity",
            "outputs": int(torch.tensor(shape).prod()) if classes is None else 1,
            "classes": {str(code): label for code, label in classes.items()} if classes else None,
            "constant_in_frame": [layer["constant"][name] for layer in layers],
        }
        for site in SITES:
            found = [layer["scores"].get(name, {}).get(site) for layer in layers]
            keys = next((list(f) for f in found if f), None)
            entry[site] = None if keys is None else {
                key: [f[key] if f else None for f in found] for key in keys
            }
        out[name] = entry
    return out


def _write(results: dict, out: Path, problem, other) -> None:
    """probes.json, report.md and the figures under `out`."""
    from blockwise.plots.probes import probe_figures

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "probes.json", json.dumps(results, indent=1, allow_nan=False) + "\n")
    probe_figures(results, problem, other, out)
    write_atomic(out / "report.md", report(results))
