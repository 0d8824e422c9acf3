"""Teacher rollouts, batched in torch, against scipy and pycma run problem by problem.

    python benchmarks/teachers.py                     # B = 4096, n = 4, 100 steps, 2 threads

Every figure is measured in this process on this machine, each the best of a few runs. scipy
and pycma are timed on a subset of the problems (--ref-problems) and scaled to B, since their
cost is linear in the number of problems; they run in float64, as numpy does. The blockwise
rollouts are timed in float64 (the trajectories that equal scipy's bit for bit) and again in
float32, both against the same float64 reference.

The "floor" is what the arithmetic alone would take: the step's floating point work at the
machine's own measured rate for a large matmul in that dtype, or its minimal memory traffic at
the measured copy bandwidth, whichever is larger. It is far below anything reachable here, and
the gap is not arithmetic: a step is dozens of separate tensor operations (a Nelder-Mead step
some fifty, on vectors of B values), each paying torch's fixed cost per operation, a few
microseconds, and making its own pass over memory; and a rollout writes its trajectory into
fresh memory, every page of which the kernel must fault in and zero first. Neither is counted
in the floor.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import blockwise
from blockwise import problems, teachers


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_rates(dtype: torch.dtype) -> tuple[float, float]:
    """(FLOP/s of a large matmul in dtype, bytes/s of a large copy), measured here."""
    a = torch.randn(1024, 1024, dtype=dtype)
    t = _best_of(lambda: a @ a, 5)
    flops = 2 * 1024**3 / t
    src = torch.randn(32 * 1024**2, dtype=torch.float64)
    dst = torch.empty_like(src)
    t = _best_of(lambda: dst.copy_(src), 5)
    return flops, 2 * src.numel() * 8 / t


def _floor(flops: float, bytes_: float, rates: tuple[float, float]) -> float:
    return max(flops / rates[0], bytes_ / rates[1])


def _numpy_quadratic(problem: problems.Problem, b: int):
    """Instance b as a scalar numpy function, the way a scipy or pycma user would write it."""
    a = problem.hessian_half()[b].numpy()
    c = problem.params["x_opt"][b].numpy()

    def f(x):
        d = np.asarray(x) - c
        return float(d @ a @ d)

    return f


def bench_nelder_mead(problem, x0s, steps, ref, rates) -> list[dict]:
    from scipy.optimize import minimize

    nm = teachers.make("nelder_mead")
    options = {"maxiter": steps + 1, "maxfev": 10**9, "xatol": 0.0, "fatol": 0.0}
    x0 = x0s[torch.float64]

    def scipy_runs():
        for b in range(ref):
            minimize(
                _numpy_quadratic(problem, b), x0[b].numpy(), method="Nelder-Mead", options=options
            )

    theirs = _best_of(scipy_runs, 5) * problem.batch_size / ref
    n, batch = problem.dim, problem.batch_size
    rows = []
    for dtype, x in x0s.items():
        ours = _best_of(lambda x=x: blockwise.rollout(nm, problem, x, steps), 10)
        size = torch.finfo(dtype).bits // 8
        # Per step: the 4 candidates (xe, xr, xc, xcc) from the centroid (3n flops each), f at
        # each (about 2n^2 + 3n flops); memory: read the (n+1, n) simplex and its n+1 f values,
        # write the next state into the trajectory, write and read the candidates.
        flops = batch * steps * (4 * (2 * n * n + 3 * n + 3 * n) + n * n)
        bytes_ = batch * steps * size * (2 * (n + 1) * (n + 1) + 2 * 4 * n)
        rows.append(
            {
                "teacher": "nelder_mead",
                "dtype": dtype,
                "ours": ours,
                "ref": theirs,
                "floor": _floor(flops, bytes_, rates[dtype]),
                "ref_name": "scipy",
            }
        )
    return rows


def bench_cma(problem, x0s, steps, ref, rates) -> list[dict]:
    import cma

    es_teacher = teachers.make("cma_es", sigma0=0.5)
    opts = {
        "seed": 1,
        "CMA_mirrors": 0,
        "verbose": -9,
        "tolx": 0,
        "tolfun": 0,
        "tolfunhist": 0,
        "tolflatfitness": 10**9,
        "tolstagnation": 10**9,
        "maxiter": 10**9,
    }
    x0 = x0s[torch.float64]

    def pycma_runs():
        for b in range(ref):
            f = _numpy_quadratic(problem, b)
            es = cma.CMAEvolutionStrategy(x0[b].numpy(), 0.5, opts)
            for _ in range(steps):
                xs = es.ask()
                es.tell(xs, [f(x) for x in xs])

    theirs = _best_of(pycma_runs, 1) * problem.batch_size / ref
    n, batch = problem.dim, problem.batch_size
    lam = 4 + int(3 * np.log(n))
    rows = []
    for dtype, x in x0s.items():
        ours = _best_of(lambda x=x: blockwise.rollout(es_teacher, problem, x, steps), 3)
        size = torch.finfo(dtype).bits // 8
        # Per generation: eigh of C (~9n^3), sampling (2 lam n^2), f (lam (2n^2+3n)), the
        # rank-mu update (2 lam n^2) and C^{-1/2} products (2 lam n^2 + 2n^2).
        flops = batch * steps * (9 * n**3 + lam * (8 * n * n + 3 * n) + 2 * n * n)
        bytes_ = batch * steps * size * (4 * n * n + 2 * lam * n + 8 * n)
        rows.append(
            {
                "teacher": "cma_es",
                "dtype": dtype,
                "ours": ours,
                "ref": theirs,
                "floor": _floor(flops, bytes_, rates[dtype]),
                "ref_name": "pycma",
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--ref-problems", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    problem = problems.make("quadratic", batch=args.batch, dim=args.dim, seed=0, condition=10.0)
    dtypes = (torch.float64, torch.float32)
    x0s = {dtype: problem.sample_x0(seed=1, dtype=dtype) for dtype in dtypes}
    rates = {dtype: machine_rates(dtype) for dtype in dtypes}
    print(
        f"B = {args.batch}, n = {args.dim}, {args.steps} steps, {torch.get_num_threads()} "
        f"threads; measured {rates[torch.float64][0] / 1e9:.1f} / "
        f"{rates[torch.float32][0] / 1e9:.1f} GFLOP/s (float64 / float32 matmul), "
        f"{rates[torch.float64][1] / 1e9:.1f} GB/s (copy); references in float64"
    )
    print(
        f"{'teacher':<13} {'dtype':<8} {'blockwise s':>11} {'reference s':>13} {'speed-up':>9} "
        f"{'floor s':>9} {'x floor':>8}"
    )
    for bench in (bench_nelder_mead, bench_cma):
        for r in bench(problem, x0s, args.steps, args.ref_problems, rates):
            print(
                f"{r['teacher']:<13} {str(r['dtype']).removeprefix('torch.'):<8} "
                f"{r['ours']:>11.3f} {r['ref']:>8.2f} {r['ref_name']:<5}"
                f"{r['ref'] / r['ours']:>8.0f}x {r['floor']:>9.4f} {r['ours'] / r['floor']:>7.0f}x"
            )


if __name__ == "__main__":
    main()
