"""The `blockwise` command line. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from blockwise import problems, teachers
from blockwise.config import describe_recipe, dump_recipe, load_recipe
from blockwise.config.load import physical_memory
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


def run(args: argparse.Namespace) -> int:
    """Run a recipe: rollouts, per-block pretraining, per-block errors with controls."""
    import dataclasses

    from blockwise.pipeline import run as run_recipe
    from blockwise.rundir import OutputDirError

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"train.workers={args.workers}")
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    recipe = load_recipe(args.file, overrides)
    # Lightning's banner (accelerators found, tips) drowns the run's own report.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.out is not None:
        recipe = dataclasses.replace(recipe, out=args.out)
    # A killed run (SIGTERM: a scheduler, `kill`, a closing session) stops as Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run_recipe(recipe, force=args.force)
    except OutputDirError as err:
        print(f"blockwise run: error: {err}", file=sys.stderr)
        return 2
    except DivergedTraining as err:
        print(f"blockwise run: error: {err}", file=sys.stderr)
        return 1
    except BrokenProcessPool:
        print(
            "blockwise run: error: a worker process died (out of memory?); lower --workers and "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        # Every stage's output is written whole or not at all, and training keeps its last
        # epoch's checkpoint, so the same command picks up where this one stopped.
        again = "the same command without --force" if args.force else "the same command"
        how = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated (SIGTERM)"
        print(f"blockwise run: {how}; run {again} again to resume in {recipe.out}",
              file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


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
    u.add_argument("file", metavar="FILE", help="a recipe, e.g. recipes/quickstart.yaml")
    _add_overrides(u)
    u.add_argument("--out", default=None, help="output directory (default: recipe.out)")
    u.add_argument("--force", action="store_true", help="replace an existing output directory")
    u.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="train N blocks at once, each in its own process (= --set train.workers=N; "
        "greedy pairing trains them in order)",
    )
    u.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads torch computes with, per process (= --set threads=N); on a busy "
        "machine fewer can be much faster",
    )
    u.set_defaults(func=run)

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
