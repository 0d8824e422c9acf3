"""The `blockwise` command line. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from blockwise import problems, teachers
from blockwise.config import Recipe, describe_recipe, dump_recipe, load_recipe
from blockwise.config.load import physical_memory
from blockwise.config.schema import MAX_STEPS
from blockwise.rollout import rollout
from blockwise.training.trainer import DivergedTraining, Terminated


def demo(args: argparse.Namespace) -> int:
    """Roll a teacher out on a batch of 2-D problems, print its progress, plot one trajectory."""
    from matplotlib.figure import Figure

    from blockwise.plots import plot_objective, plot_trajectory, save

    problem = problems.make(args.family, batch=args.batch, dim=2, seed=args.seed)
    x0 = problem.sample_x0(seed=args.seed + 1)
    teacher = teachers.make(args.teacher, **dict(args.setting))
    traj = rollout(teacher, problem, x0, args.steps)
    f_min = problem(problem.minimizer()[:, None, :])[:, 0]
    gap = torch.stack(
        [problem(teacher.incumbent(traj[k])[:, None, :])[:, 0] - f_min for k in range(len(traj))]
    )
    print(f"{teacher.name} on {args.batch} {args.family} problems (n = 2), {args.steps} steps")
    print(f"{'step':>5} {'median f - f*':>14}")
    for k in sorted({0, *range(0, args.steps + 1, max(args.steps // 8, 1)), args.steps}):
        print(f"{k:>5} {gap[k].median().item():>14.3e}")
    if teacher.branches:
        taken = traj.extras["branch"].flatten()
        counts = torch.bincount(taken[taken >= 0], minlength=len(teacher.branches)).tolist()
        named = zip(teacher.branches, counts, strict=True)
        print("branches: " + ", ".join(f"{n} {c}" for n, c in named))

    fig = Figure(figsize=(8, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_trajectory(problem, teacher, traj, index=0, ax=left)
    left.set_title(f"{teacher.name}: problem 0")
    plot_objective(problem, teacher, traj, f_min=f_min, ax=right)
    right.set_title(f"{args.batch} problems")
    paths = save(fig, Path(args.out) / f"demo_{teacher.name}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def recipe(args: argparse.Namespace) -> int:
    """Print the documentation of every recipe field, or check a recipe and print it resolved."""
    if args.file is None:
        print(describe_recipe(), end="")
    else:
        print(dump_recipe(load_recipe(args.file, args.overrides)), end="")
    return 0


def _terminate(signum, frame) -> None:
    raise Terminated


def _recipe_of(args: argparse.Namespace, *extra: str) -> Recipe:
    """The FILE of `run` or `sweep` loaded with its --set overrides, then --workers and
    --threads, then `extra`."""
    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"train.workers={args.workers}")
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    return load_recipe(args.file, [*overrides, *extra])


def _training(command: str, work: Callable[[], object], out: str, force: bool) -> int:
    """Call `work`, which trains into the directory `out`, for `blockwise <command>`: SIGTERM
    stops it as Ctrl-C does, and what stops it is one line on stderr and an exit code (2: the
    directory cannot be used, 1: training failed, 130 / 143: interrupted, resumable)."""
    from blockwise.rundir import OutputDirError

    # Lightning's banner (accelerators found, tips) drowns the run's own report.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # A killed run (SIGTERM: a scheduler, `kill`, a closing session) stops as Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        work()
    except OutputDirError as err:
        print(f"blockwise {command}: error: {err}", file=sys.stderr)
        return 2
    except DivergedTraining as err:
        print(f"blockwise {command}: error: {err}", file=sys.stderr)
        return 1
    except BrokenProcessPool:
        print(
            f"blockwise {command}: error: a worker process died (out of memory?); lower "
            "--workers and run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        # Every stage's output is written whole or not at all, and training keeps its last
        # epoch's checkpoint, so the same command picks up where this one stopped.
        again = "the same command without --force" if force else "the same command"
        how = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated (SIGTERM)"
        print(f"blockwise {command}: {how}; run {again} again to resume in {out}",
              file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a recipe: rollouts, per-block pretraining, per-block errors with controls."""
    import dataclasses

    from blockwise.pipeline import run as run_recipe

    recipe = _recipe_of(args)
    if args.out is not None:
        recipe = dataclasses.replace(recipe, out=args.out)
    return _training("run", lambda: run_recipe(recipe, force=args.force), recipe.out, args.force)


def sweep(args: argparse.Namespace) -> int:
    """Run a recipe at several depths K and seeds; write sweep.json and its figure."""
    from blockwise.sweep import default_dir
    from blockwise.sweep import sweep as sweep_recipe

    # Loaded at the deepest K, so that the loader's memory check answers for the largest run.
    recipe = _recipe_of(args, f"steps={max(args.depths)}")
    out = args.out if args.out is not None else str(default_dir(recipe))
    return _training(
        "sweep",
        lambda: sweep_recipe(recipe, args.depths, args.seeds, force=args.force, out=out),
        out,
        args.force,
    )


def plot(args: argparse.Namespace) -> int:
    """Draw the figures of one run directory, or compare several."""
    from blockwise.plots.runs import plot_runs

    paths = plot_runs(args.dirs, out=args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _check_eval_size(config: dict, count: int, steps: int) -> None:
    """Refuse an evaluation whose states would not fit in half of this machine's memory,
    before rolling anything out: the teacher's trajectory, the stack's and the identity's are
    each about (K+1) x B x tokens x token width float64 numbers, and their tokens a few more."""
    codec = config["codec"]
    need = 8 * 6 * count * (steps + 1) * codec["num_tokens"] * codec["token_dim"]
    have = physical_memory()
    if have is not None and need > have // 2:
        raise ValueError(
            f"--count {count} x --steps {steps} needs about {need / 2**30:.0f} GiB, more than "
            f"half of this machine's {have / 2**30:.0f} GiB; lower --count or --steps"
        )


def evaluate(args: argparse.Namespace) -> int:
    """Re-evaluate a saved stack on fresh test problems and print its per-layer errors."""
    import json

    from blockwise.checkpoints import read_config
    from blockwise.evaluation.stack_eval import eval_checkpoint
    from blockwise.files import write_atomic

    path = Path(args.dir)
    if (path / "checkpoint").is_dir():
        path = path / "checkpoint"  # a run directory: its final stack
    config = read_config(path)
    _check_eval_size(config, args.count, args.steps or config["depth"])
    if args.json is not None and not Path(args.json).parent.is_dir():
        raise ValueError(f"--json {args.json}: no such directory {Path(args.json).parent}")
    metrics = eval_checkpoint(
        path,
        family=args.problems,
        dim=args.dim,
        steps=args.steps,
        problems=args.count,
        seed=args.seed,
        beyond=args.beyond,
        vertex_f=args.vertex_f,
    )
    primary = metrics["primary"]
    print(f"{path}: {metrics['problems']} test problems, {metrics['layers']} layers")
    depth = config["depth"]
    if metrics["layers"] > depth:
        print(f"the stack has {depth} layers: layers {depth + 1} to {metrics['layers']} repeat "
              "its last block")
    print(f"{'layer':>5} {'teacher-forced':>15} {'rollout':>10} {'identity':>10} {'progress':>9}")
    for k in range(metrics["layers"]):
        row = [
            metrics["teacher_forced"][primary]["median"][k],
            metrics["rollout"][primary]["median"][k],
            metrics["identity_rollout"][primary]["median"][k],
            metrics["progress_ratio"]["median"][k],
        ]
        cells = [f"{v:.3g}" if v is not None else "-" for v in row]
        print(f"{k + 1:>5} {cells[0]:>15} {cells[1]:>10} {cells[2]:>10} {cells[3]:>9}")
    print(f"breakdown depth (threshold {metrics['threshold']}): {metrics['breakdown_depth']}")
    if args.json is not None:
        write_atomic(args.json, json.dumps(metrics, indent=2))
        print(f"wrote {args.json}")
    return 0


def probe(args: argparse.Namespace) -> int:
    """Run the probes on a saved stack and print the signs found."""
    from blockwise.probes import probe as run_probes
    from blockwise.probes.run import parse_layers

    # Probing is many small operations: more threads only add overhead, and on a busy machine
    # a great deal (two threads were 8 times slower than one beside two other jobs).
    torch.set_num_threads(args.threads)
    layers = None if args.layers is None else parse_layers(args.layers)
    results = run_probes(args.dir, out=args.out, problems=args.problems, seed=args.seed,
                         swap_layer=args.swap_layer, layers=layers)
    print(f"{results['checkpoint']}: {results['problems']['train']} training and "
          f"{results['problems']['test']} held-out problems, {results['seconds']} s")
    for row in results["signs"]:
        found = {True: "yes", False: "no", None: "n/a"}[row["found"]]
        print(f"{found:>4}  {row['sign']}: {row['number']}")
    print(f"wrote {results['out']}/probes.json, report.md and figures")
    return 0


def _setting(text: str) -> tuple[str, object]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


# Bounds on what `blockwise eval` may be asked to roll out; memory is checked as well.
MAX_EVAL_STEPS = 100_000
MAX_EVAL_PROBLEMS = 1 << 24


def _count(low: int, high: int):
    """An argparse type: an int in [low, high], refused with the range otherwise (0 would
    otherwise read as "the default" further on)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high}, got {value}")
        return value

    return parse


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a recipe field, e.g. --set train.lr=3e-4 (the value is YAML)",
    )


def _int_list(low: int, high: int):
    """An argparse type: comma-separated ints in [low, high], none repeated; sorted."""
    one = _count(low, high)

    def parse(text: str) -> list[int]:
        values = [one(part.strip()) for part in text.split(",")]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(
                f"{', '.join(map(str, repeated))} given more than once in {text[:40]!r}"
            )
        return sorted(values)

    return parse


def _add_training(p: argparse.ArgumentParser, out: str, force: str) -> None:
    """The FILE, --set, --out, --force, --workers and --threads that `run` and `sweep` share."""
    p.add_argument("file", metavar="FILE", help="a recipe, e.g. recipes/quickstart.yaml")
    _add_overrides(p)
    p.add_argument("--out", default=None, help=out)
    p.add_argument("--force", action="store_true", help=force)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="train N blocks at once, each in its own process (= --set train.workers=N; "
        "greedy pairing trains them in order)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads torch computes with, per process (= --set threads=N); on a busy "
        "machine fewer can be much faster",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blockwise", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="roll a teacher out on 2-D problems and plot it")
    d.add_argument("--teacher", default="nelder_mead", choices=sorted(teachers.REGISTRY))
    d.add_argument("--family", default="quadratic", choices=sorted(problems.REGISTRY))
    d.add_argument(
        "--set",
        dest="setting",
        action="append",
        type=_setting,
        default=[],
        metavar="KEY=VALUE",
        help="a teacher setting, e.g. --set adaptive=true",
    )
    d.add_argument("--batch", type=_count(1, 1 << 16), default=256)
    d.add_argument("--steps", type=_count(1, 10_000), default=40)
    d.add_argument("--seed", type=_count(0, 2**32 - 1), default=0)
    d.add_argument("--out", default="runs/demo")
    d.set_defaults(func=demo)

    r = sub.add_parser(
        "recipe",
        help="document the recipe fields, or check a recipe and print it resolved",
        description="Without FILE, print every recipe field. With FILE, check the recipe and\n"
        "its --set overrides, and print it with every field resolved; nothing is written.",
        epilog=describe_recipe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("file", nargs="?", metavar="FILE", help="a recipe, e.g. recipes/quickstart.yaml")
    _add_overrides(r)
    r.set_defaults(func=recipe)

    u = sub.add_parser(
        "run",
        help="run a recipe: pretraining, stacking, fine-tuning, evaluation, checkpoint, plots",
        description="Run a recipe into its output directory (recipe.out, or --out). A finished "
        "run is not redone; an interrupted one resumes; a run of another recipe is replaced "
        "only with --force; a directory that is not a run is never touched.",
    )
    _add_training(u, "output directory (default: recipe.out)",
                   "replace an existing output directory")
    u.set_defaults(func=run)

    w = sub.add_parser(
        "sweep",
        help="run a recipe at several depths K and seeds: sweep.json and its figure",
        description="Run a recipe once per depth K (--depths) and seed (--seeds), each into "
        "its own run directory K<K>-seed<seed> inside the sweep directory (--out, default "
        "runs/<name>-sweep), and write there sweep.json (breakdown depth, last-layer error and "
        "progress ratio against K, per evaluation, with their spread over seeds) and "
        "sweep.png / sweep.pdf. Finished runs are reused, interrupted ones resume; a run of a "
        "changed recipe is replaced only with --force; a directory that is not a sweep is "
        "never touched. --depths sets the recipe's steps.",
    )
    w.add_argument(
        "--depths", type=_int_list(1, MAX_STEPS), required=True, metavar="K,K,...",
        help=f"depths K to train, e.g. 1,2,4,8 (each 1 to {MAX_STEPS})",
    )
    w.add_argument(
        "--seeds", type=_int_list(0, 2**32 - 1), default=None, metavar="S,S,...",
        help="training seeds, e.g. 0,1,2 (default: the recipe's seed)",
    )
    _add_training(w, "the sweep directory (default: runs/<name>-sweep)",
                  "replace runs of another recipe inside the sweep directory")
    w.set_defaults(func=sweep)

    e = sub.add_parser(
        "eval",
        help="re-evaluate a saved stack on fresh test problems",
        description="Re-evaluate a stack (a checkpoint directory, or a run directory's final "
        "stack) on fresh test problems: of another family, or for more steps than it was "
        "trained for (the last block repeats past K).",
    )
    e.add_argument("dir", metavar="DIR", help="a run directory or a checkpoint directory")
    e.add_argument("--problems", default=None, metavar="FAMILY", help="problem family")
    e.add_argument("--dim", type=_count(1, 4096), default=None, help="n (must be the trained one)")
    e.add_argument(
        "--steps", type=_count(1, MAX_EVAL_STEPS), default=None, metavar="K",
        help=f"layers to measure, 1 to {MAX_EVAL_STEPS} (default: the stack's depth)",
    )
    e.add_argument(
        "--count", type=_count(1, MAX_EVAL_PROBLEMS), default=1024,
        help=f"test problems, 1 to {MAX_EVAL_PROBLEMS}",
    )
    e.add_argument(
        "--seed", type=_count(0, 2**32 - 1), default=None,
        help="test seed (default the recipe's)",
    )
    e.add_argument(
        "--beyond",
        choices=["last", "none"],
        default="last",
        help="past the trained depth: repeat the last block, or refuse",
    )
    e.add_argument(
        "--vertex-f",
        choices=["own", "evaluated"],
        default=None,
        help="Nelder-Mead: the vertices' f values between layers are the stack's own output "
        "or evaluated by the harness (default the recipe's codec.vertex_f)",
    )
    e.add_argument("--json", default=None, metavar="FILE", help="also write the metrics here")
    e.set_defaults(func=evaluate)

    g = sub.add_parser(
        "plot",
        help="draw the figures of a run or a checkpoint directory, or compare several",
        description="With one run directory, write DIR/plots/: depth_errors, objective and, for "
        "a saved stack of a 2-D problem, trajectories (PNG and PDF). A checkpoint directory "
        "(config.json + model.safetensors) is drawn from the metrics it was saved with (or "
        "evaluated if it has none) into --out, by default ./plots/<name>. With several, write "
        "one comparison of their rollout errors to --out.",
    )
    g.add_argument(
        "dirs", nargs="+", metavar="DIR",
        help="a run directory (holds metrics.json) or a checkpoint directory",
    )
    g.add_argument(
        "--out",
        default=None,
        help="where a checkpoint's figures go (default ./plots/<name>), or the comparison of "
        "several DIRs, without suffix (default ./compare)",
    )
    g.set_defaults(func=plot)

    o = sub.add_parser(
        "probe",
        help="look inside a saved stack: linear probes, attention, counterfactual, OOD",
        description="Run a saved stack (a checkpoint directory, or a run directory's final "
        "stack) on fresh problems and probe it: the teacher's intermediate quantities read "
        "from each layer's stream beside an untrained stack and shuffled labels, where the "
        "heads look, an objective swapped mid-stack, other problems, and how alike its layers "
        "are. Writes probes.json, report.md and figures (PNG and PDF) to --out.",
    )
    o.add_argument("dir", metavar="DIR", help="a run directory or a checkpoint directory")
    o.add_argument("--out", default=None,
                   help="output directory (default ./runs/probes/<name>); never a checkpoint")
    o.add_argument("--problems", type=_count(64, 1 << 16), default=4096,
                   help="fresh problems to run, a quarter held out (64 to 65536)")
    o.add_argument("--seed", type=_count(0, 2**32 - 3), default=1009,
                   help="their seed (seed + 1 and + 2 are used too; never the recipe's "
                   "training or validation seed)")
    o.add_argument("--swap-layer", type=_count(1, 1024), default=None, metavar="J",
                   help="the layer at which the counterfactual swaps the objective (default "
                   "depth // 2 + 1)")
    o.add_argument("--layers", default=None, metavar="K,K,...",
                   help="the layers to probe, e.g. 1,2,4,8 (default every layer of a stack up "
                   "to 16 deep, else 1, 2, 4, ... and the last); the stack runs through the "
                   "deepest")
    o.add_argument("--threads", type=_count(1, 1024), default=1, metavar="N",
                   help="CPU threads torch computes with (default 1: the probes are many small "
                   "operations, which more threads slow down)")
    o.set_defaults(func=probe)
    return p


# What to do about an operating-system error, by errno.
OS_ADVICE = {
    errno.EACCES: "check its permissions, or choose another path (--out)",
    errno.EPERM: "check its permissions, or choose another path (--out)",
    errno.EROFS: "the file system is read-only; choose another path (--out)",
    errno.ENOSPC: "the disk is full; free some space and run the same command again "
    "(a run resumes where it stopped)",
    errno.EDQUOT: "the disk quota is exhausted; free some space and run the same command again",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EISDIR: "it is a directory; give a file",
    errno.ENOENT: "it does not exist",
    errno.ENOLCK: "this file system cannot lock files (NFS without its lock daemon?); mount it "
    "with locking, or choose a local --out",
}


def os_error_line(command: str, err: OSError) -> str:
    """One line for an OSError: the path, what went wrong, and what to do."""
    where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    what = err.strerror or str(err)
    advice = OS_ADVICE.get(err.errno, "")
    return f"blockwise {command}: error: {where or 'a file'}: {what}" + (
        f"; {advice}" if advice else ""
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"blockwise {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(os_error_line(args.command, err), file=sys.stderr)
        return 1
