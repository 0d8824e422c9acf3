"""Teacher rollouts, batched in torch, against scipy and pycma run problem by problem.

    python benchmarks/teachers.py                     # B = 4096, n = 4, 100 steps, 2 threads

Every figure is measured in this process on this machine. scipy and pycma are timed on a
subset of the problems (--ref-problems) and scaled to B, since their cost is linear in the
number of problems. The "floor" is what the arithmetic alone would take: the step's floating
point work at the machine's own measured float64 rate, or its minimal memory traffic at the
measured copy bandwidth, whichever is larger. The gap to the floor is per-operation overhead:
at these sizes a step is some hundred small tensor operations.
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


def machine_rates() -> tuple[float, float]:
    """(float64 FLOP/s of a large matmul, bytes/s of a large copy), measured here."""
    a = torch.randn(1024, 1024, dtype=torch.float64)
    t = _best_of(lambda: a @ a, 5)
    flops = 2 * 1024**3 / t
    src = torch.randn(32 * 1024**2, dtype=torch.float64)
    dst = torch.empty_like(src)
    t = _best_of(lambda: dst.copy_(src), 5)
    return flops, 2 * src.numel() * 8 / t


def _numpy_quadratic(problem: problems.Problem, b: int):
    """Instance b as a scalar numpy function, the way a scipy or pycma user would write it."""
    a = problem.hessian_half()[b].numpy()
    c = problem.params["x_opt"][b].numpy()

    def f(x):
        d = np.asarray(x) - c
        return float(d @ a @ d)

    return f


def bench_nelder_mead(problem, x0, steps, ref, rates) -> dict:
    from scipy.optimize import minimize

    nm = teachers.make("nelder_mead")
    ours = _best_of(lambda: blockwise.rollout(nm, problem, x0, steps), 3)
    options = {"maxiter": steps + 1, "maxfev": 10**9, "xatol": 0.0, "fatol": 0.0}

    def scipy_runs():
        for b in range(ref):
            minimize(
                _numpy_quadratic(problem, b), x0[b].numpy(), method="Nelder-Mead", options=options
            )

    theirs = _best_of(scipy_runs, 1) * problem.batch_size / ref
    n, batch = problem.dim, problem.batch_size
    # Per step: n+4 candidate points (xr, xe, xc, xcc, n shrink points), each f costs about
    # 2n^2 + 3n flops; reading and writing the (n+1, n) simplex and (n+1) f values, 8 bytes each.
    flops = batch * steps * (n + 4) * (2 * n * n + 3 * n + 4 * n)
    bytes_ = batch * steps * 8 * (2 * (n + 1) * (n + 1) + 2 * (n + 4) * n)
    floor = max(flops / rates[0], bytes_ / rates[1])
    return {
        "teacher": "nelder_mead",
        "ours": ours,
        "ref": theirs,
        "floor": floor,
        "ref_name": "scipy",
    }


def bench_cma(problem, x0, steps, ref, rates) -> dict:
    import cma

    es_teacher = teachers.make("cma_es", sigma0=0.5)
    ours = _best_of(lambda: blockwise.rollout(es_teacher, problem, x0, steps), 3)
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
    # Per generation: eigh of C (~9n^3), sampling (2 lam n^2), f (lam (2n^2+3n)), the rank-mu
    # update (2 lam n^2) and C^{-1/2} products (2 lam n^2 + 2n^2).
    flops = batch * steps * (9 * n**3 + lam * (8 * n * n + 3 * n) + 2 * n * n)
    bytes_ = batch * steps * 8 * (4 * n * n + 2 * lam * n + 8 * n)
    floor = max(flops / rates[0], bytes_ / rates[1])
    return {"teacher": "cma_es", "ours": ours, "ref": theirs, "floor": floor, "ref_name": "pycma"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--ref-problems", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    problem = problems.make("quadratic", batch=args.batch, dim=args.dim, seed=0, condition=10.0)
    x0 = problem.sample_x0(seed=1, dtype=dtype)
    rates = machine_rates()
    print(
        f"B = {args.batch}, n = {args.dim}, {args.steps} steps, {args.dtype}, "
        f"{torch.get_num_threads()} threads; measured {rates[0] / 1e9:.1f} GFLOP/s (float64 "
        f"matmul), {rates[1] / 1e9:.1f} GB/s (copy)"
    )
    print(
        f"{'teacher':<13} {'blockwise s':>11} {'reference s':>13} {'speed-up':>9} "
        f"{'floor s':>9} {'x floor':>8}"
    )
    for bench in (bench_nelder_mead, bench_cma):
        r = bench(problem, x0, args.steps, args.ref_problems, rates)
        print(
            f"{r['teacher']:<13} {r['ours']:>11.3f} {r['ref']:>8.2f} {r['ref_name']:<5}"
            f"{r['ref'] / r['ours']:>8.0f}x {r['floor']:>9.4f} {r['ours'] / r['floor']:>7.0f}x"
        )


if __name__ == "__main__":
    main()
