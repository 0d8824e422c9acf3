"""`blockwise sweep`: one recipe run at several depths K and seeds, summarized against K.

    summary = sweep(load_recipe("recipes/quickstart.yaml"), depths=[1, 2, 4], seeds=[0, 1, 2])

Each (K, seed) is the recipe with `steps=K` and `seed=seed`, named `<name>-K<K>-seed<seed>`,
run by `blockwise.pipeline.run` into its own run directory `K<K>-seed<seed>` inside the sweep
directory (default `runs/<name>-sweep`), so a finished run is reused, an interrupted one
resumes, and a run of a changed recipe is replaced only with `force`. The sweep directory
holds:

    .blockwise-sweep      the marker: only a directory holding it is written into (rundir.held)
    .blockwise.lock       held while a sweep runs there, so that a second one is refused
    K<K>-seed<s>/         one run directory per (K, seed)
    sweep.json            the summary below, written whole or not at all
    sweep.png, sweep.pdf  the figure (`blockwise.plots.sweep.plot_sweep`)

sweep.json, lists indexed [depth] or [depth][seed] in the order of `depths` and `seeds`:

    {
      "recipe": name, "depths": [D], "seeds": [S], "primary": field, "threshold": t,
      "runs": [[run directory, relative to the sweep directory]],
      "evaluations": {name: {measure: {"per_seed": [[value]], "median": [D], "min": [D],
                                        "max": [D]}}},
      "identity": {"breakdown_depth": {...}, "last_error": {...}},
      "left_out": {name: [run directory, ...]},
    }

The evaluations are the keys of the runs' `metrics["evaluations"]` (untrained, stacked = before
fine-tuning, finetuned = after, looped, shuffled, ...): those every run holds, in the first
run's order; one that some runs lack is left out and listed under `left_out` with those runs.
The measures, at the last layer K of each run: `breakdown_depth` (the first layer whose median
rollout error of the primary field passes the threshold; null: none did within K layers),
`last_error` (the median rollout error of the primary field at layer K) and `progress` (the
median progress ratio at layer K). `identity` is the stack that never moves, s_0 held (its
rollout error depends on the test problems alone, which the seed does not change).

Across seeds a null breakdown depth counts as later than any layer: `max` is null if any seed
held to K, `min` only if all did, and `median` if the middle seed (either of the two middle ones
for an even count) did. A null error or progress (nothing measured at that layer) is left out of
the summary, which is null only if no seed measured one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from blockwise.config import Recipe
from blockwise.config.schema import MAX_STEPS, SAFE_NAME, SEED
from blockwise.evaluation.metrics import breakdown_depth
from blockwise.files import write_atomic
from blockwise.jsonable import to_jsonable
from blockwise.pipeline import run
from blockwise.plots import save
from blockwise.plots.sweep import plot_sweep
from blockwise.rundir import held

MARKER = ".blockwise-sweep"
SUMMARY = "sweep.json"
FIGURE = "sweep"  # sweep.png and sweep.pdf


def default_dir(recipe: Recipe) -> Path:
    """Where a sweep of `recipe` goes unless told: runs/<name>-sweep, beside its runs."""
    return Path("runs") / f"{recipe.name}-sweep"


def run_dir(depth: int, seed: int) -> str:
    """The directory of the run at depth K and `seed`, inside the sweep directory."""
    return f"K{depth}-seed{seed}"


def run_name(recipe: Recipe, depth: int, seed: int) -> str:
    """The name of the run at depth K and `seed` (its checkpoints and figures say it)."""
    return f"{recipe.name}-{run_dir(depth, seed)}"


def sweep(
    recipe: Recipe,
    depths: Sequence[int],
    seeds: Sequence[int] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Run `recipe` at every depth in `depths` with every seed in `seeds` (default: the
    recipe's own) into the sweep directory `out` (default `default_dir`), write sweep.json and
    the figure there, and return the summary (the module docstring gives its keys).

    `force` replaces runs of another recipe inside the sweep (`pipeline.run`); a directory that
    is not a sweep is never touched. Depths and seeds are sorted; a repeated or out-of-range
    one is a ValueError before anything is written.
    """
    depths = _checked("depths", depths, lambda v: 1 <= v <= MAX_STEPS, f"1 to {MAX_STEPS}")
    seeds = _checked(
        "seeds", [recipe.seed] if seeds is None else seeds, SEED.ok, "0 to 2^32 - 1"
    )
    longest = run_name(recipe, depths[-1], seeds[-1])
    if not SAFE_NAME.ok(longest):
        raise ValueError(
            f"recipe name {recipe.name!r}: the sweep's run names (such as {longest!r}) must be "
            f"{SAFE_NAME.expects}; give the recipe a shorter name"
        )
    where = Path(out if out is not None else default_dir(recipe)).expanduser().resolve()
    with held(where, MARKER, "sweep"):
        runs, metrics = [], []
        total = len(depths) * len(seeds)
        for i, depth in enumerate(depths):
            runs.append([])
            metrics.append([])
            for j, seed in enumerate(seeds):
                path = run_dir(depth, seed)
                one = dataclasses.replace(
                    recipe,
                    name=run_name(recipe, depth, seed),
                    steps=depth,
                    seed=seed,
                    out=str(where / path),
                )
                log(f"sweep: run {i * len(seeds) + j + 1} of {total}, K = {depth}, seed {seed}: "
                    f"{where / path}")
                metrics[-1].append(run(one, force=force, log=log))
                runs[-1].append(path)
        summary = summarize(recipe.name, depths, seeds, runs, metrics)
        write_atomic(where / SUMMARY, json.dumps(summary, indent=2, allow_nan=False))
        figures = save(plot_sweep(summary), where / FIGURE)
    log(format_summary(summary))
    log(f"wrote {where / SUMMARY}, {', '.join(str(p) for p in figures)}")
    return summary


def _checked(what: str, values: Sequence[int], ok: Callable[[int], bool], bounds: str) -> list:
    """`values` sorted, after checking each is an int within `bounds` and none repeats."""
    values = list(values)
    if not values:
        raise ValueError(f"{what}: expected at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not ok(v):
            raise ValueError(f"{what}: expected integers {bounds}, got {v!r}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what}: {', '.join(map(str, repeated))} given more than once")
    return sorted(values)


def summarize(
    recipe: str,
    depths: list[int],
    seeds: list[int],
    runs: list[list[str]],
    metrics: list[list[dict]],
) -> dict[str, Any]:
    """The sweep.json summary of the runs' metrics (`pipeline.run`'s metrics.json), indexed
    [depth][seed] like `runs`; the module docstring gives its keys."""
    cells = [(i, j) for i in range(len(depths)) for j in range(len(seeds))]
    first = metrics[0][0]["evaluations"]
    names = [n for n in first if all(n in metrics[i][j]["evaluations"] for i, j in cells)]
    left_out = {
        n: [runs[i][j] for i, j in cells if n not in metrics[i][j]["evaluations"]]
        for n in dict.fromkeys(n for i, j in cells for n in metrics[i][j]["evaluations"])
        if n not in names
    }
    for i, j in cells:
        for n in names:
            layers = metrics[i][j]["evaluations"][n]["layers"]
            if layers != depths[i]:
                raise ValueError(
                    f"{runs[i][j]}/metrics.json: evaluations.{n}.layers is {layers}, expected "
                    f"the run's depth {depths[i]}"
                )
    reference = next(iter(first.values()))
    primary, threshold = reference["primary"], reference["threshold"]

    def measure(read: Callable[[dict, int], Any], censored: bool = False) -> dict[str, list]:
        per_seed = [[read(metrics[i][j], depths[i]) for j in range(len(seeds))]
                    for i in range(len(depths))]
        return {"per_seed": per_seed, **_spread(per_seed, censored)}

    evaluations = {
        n: {
            "breakdown_depth": measure(lambda m, k, n=n: m["evaluations"][n]["breakdown_depth"],
                                       censored=True),
            "last_error": measure(
                lambda m, k, n=n: m["evaluations"][n]["rollout"][primary]["median"][k - 1]
            ),
            "progress": measure(
                lambda m, k, n=n: m["evaluations"][n]["progress_ratio"]["median"][k - 1]
            ),
        }
        for n in names
    }

    def identity(m: dict) -> list:
        """The identity's median rollout error per layer, as every evaluation of `m` holds it."""
        return next(iter(m["evaluations"].values()))["identity_rollout"][primary]["median"]

    return to_jsonable({
        "recipe": recipe,
        "depths": depths,
        "seeds": seeds,
        "primary": primary,
        "threshold": threshold,
        "runs": runs,
        "evaluations": evaluations,
        "identity": {
            "breakdown_depth": measure(
                lambda m, k: _breakdown(identity(m)[:k], threshold), censored=True
            ),
            "last_error": measure(lambda m, k: identity(m)[k - 1]),
        },
        "left_out": left_out,
    })


def _breakdown(median: list, threshold: float) -> int | None:
    """The breakdown depth of per-layer medians as JSON holds them (null: nothing measured)."""
    return breakdown_depth(
        torch.tensor([math.nan if v is None else v for v in median], dtype=torch.float64),
        threshold,
    )


def _spread(per_seed: list[list], censored: bool) -> dict[str, list]:
    """Median, min and max over seeds at each depth. `censored`: None means "not within K
    layers", later than any value (so it is ordered last); otherwise None is unmeasured and
    left out."""
    out: dict[str, list] = {"median": [], "min": [], "max": []}
    for row in per_seed:
        if censored:
            values = [math.inf if v is None else v for v in row]
        else:
            values = [v for v in row if v is not None]
        for key, f in (("median", statistics.median), ("min", min), ("max", max)):
            value = f(values) if values else None
            out[key].append(None if censored and value == math.inf else value)
    return out


def format_summary(summary: dict) -> str:
    """The summary as three small tables, depth against evaluation, of medians over seeds."""
    names = list(summary["evaluations"])
    seeds = len(summary["seeds"])
    lines = []
    for key, title in (
        ("breakdown_depth", f"breakdown depth (threshold {summary['threshold']:g}; - : held)"),
        ("last_error", f"median rollout error of {summary['primary']} at the last layer"),
        ("progress", "median progress ratio at the last layer"),
    ):
        lines.append(f"{title}, median over {seeds} seed{'s' if seeds > 1 else ''}:")
        columns = names + (["identity"] if key in summary["identity"] else [])
        lines.append(f"{'K':>5} " + " ".join(f"{n:>10}" for n in columns))
        for i, depth in enumerate(summary["depths"]):
            cells = []
            for n in columns:
                source = summary["identity"] if n == "identity" else summary["evaluations"][n]
                value = source[key]["median"][i]
                cells.append(f"{value:>10.3g}" if value is not None else f"{'-':>10}")
            lines.append(f"{depth:>5} " + " ".join(cells))
    return "\n".join(lines)
