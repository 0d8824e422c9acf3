"""How many CPU threads should torch use? The quickstart's pretraining at each thread count.

    python benchmarks/threads.py                  # threads 1 and 2, three rounds
    python benchmarks/threads.py --threads 1 2 4 --rounds 5 --busy 1

Each measurement is one `blockwise run` of the quickstart cut to its pretraining (one block,
fine-tuning off) in a fresh process, so that each thread count pays the same start-up. Thread
counts take turns round by round, so a change in the machine's load hits them alike. `--busy N`
keeps N other processes spinning on the CPU meanwhile, to measure the shared machine a user
often has (another training run, a notebook): there torch's default of one thread per core
competes with the other work for every core.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICKSTART = Path(__file__).parent.parent / "recipes" / "quickstart.yaml"
CUT = ["steps=1", "finetune.max_epochs=0", "train.max_epochs=3"]


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def one_run(threads: int, cache: str, out: str) -> float:
    """Wall seconds of the cut quickstart at `threads` threads."""
    sets = [a for s in [*CUT, f"data.cache_dir={cache}"] for a in ("--set", s)]
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "blockwise", "run", str(QUICKSTART), *sets, "--out", out,
         "--threads", str(threads)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--busy", type=int, default=0, help="other processes spinning meanwhile")
    args = p.parse_args()
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    times: dict[int, list[float]] = {t: [] for t in args.threads}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            one_run(1, f"{tmp}/cache", f"{tmp}/warm")  # the rollout cache, made once
            for r in range(args.rounds):
                for t in args.threads:
                    times[t].append(one_run(t, f"{tmp}/cache", f"{tmp}/run-{t}-{r}"))
    finally:
        stop.set()
        for s in spinners:
            s.join()
    base = statistics.median(times[args.threads[0]])
    print(f"quickstart pretraining (1 block, 3 epochs), {args.busy} busy process(es), "
          f"median of {args.rounds} runs")
    print(f"{'threads':>7} {'wall s':>8} {'range':>15} {'vs ' + str(args.threads[0]):>8}")
    for t, ts in times.items():
        m = statistics.median(ts)
        print(f"{t:>7} {m:>8.1f} {min(ts):>7.1f}-{max(ts):<7.1f} {m / base:>8.2f}")


if __name__ == "__main__":
    main()
