"""Probe: the CPU pair_sum walks against one GEMM (no asserts; prints a table).

For fp32, cosine and lorentz (kind hyperbolic), N = M in SIZES, d = 512, the diagonal relation:
  (a) torch.mm(x, y.T)                        one N x d . d x M GEMM (the floor)
  (b) tile_fwd, stat pair_sum                 target <= 1.3 x (a)
  (c) tile_fwd_grad, stat pair_sum            target <= 3.3 x (a) for cosine; lorentz <= 1.3 x
                                              cosine's (c)
  (d) tile_fwd, stat lse                      for comparison
Median of REPEATS runs after one warm-up round, measured round-robin, and the fastest run of
each (the least disturbed on a shared machine); torch.set_num_threads(THREADS).

    python bench/cpu_pair_sum_probe.py [--sizes 8192 16384] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from flashnce import _extension
from flashnce.core import spec
from flashnce.core.relation import Relation
from flashnce.geometry import GEOMETRIES

KINDS = {"cosine": "cosine", "hyperbolic": "lorentz"}


def inputs(kind, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) / math.sqrt(d)
    y = torch.randn(n, d, generator=g) / math.sqrt(d)
    if kind == "cosine":
        x, y = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    geo = GEOMETRIES[KINDS[kind]]
    c = torch.tensor(1.0)
    alpha = geo.row_scalars(x.pow(2).sum(1), c, False).float().contiguous()
    beta = geo.row_scalars(y.pow(2).sum(1), c, False).float().contiguous()
    theta = torch.tensor([10.0 if kind == "cosine" else 1.0, 1.0, -10.0 if kind == "cosine"
                          else 0.0])
    return x, y, alpha, beta, theta


def timed(fns, repeats):
    """Median seconds of each fn, measured round-robin (a warm-up round first) so that a
    shared machine's load hits every variant alike."""
    times = {k: [] for k in fns}
    for rnd in range(repeats + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if rnd:
                times[k].append(time.perf_counter() - t0)
    return ({k: statistics.median(v) for k, v in times.items()},
            {k: min(v) for k, v in times.items()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    args = ap.parse_args()
    _extension.load()
    torch.set_num_threads(args.threads)
    ops = torch.ops.flashnce
    rel = Relation.diagonal()
    print(f"threads={args.threads} d={args.d} fp32 relation=diagonal, median of {args.repeats}"
          f" ({_extension.cpu_variant()})")
    print(f"{'kind':>10} {'N=M':>6} {'(a) mm':>8} {'(b) fwd ps':>11} {'(c) fwd_grad':>13} "
          f"{'(d) fwd lse':>12} {'b/a':>5} {'c/a':>5} {'d/a':>5}")
    for n in args.sizes:
        cosine_c = None
        for kind in args.kinds:
            x, y, alpha, beta, theta = inputs(kind, n, args.d)
            ps = rel.options(kind, "pair_sum", n)
            lse = rel.options(kind, "lse", n)
            kappa = 1e-6
            t, tmin = timed({
                "a": lambda: torch.mm(x, y.T),
                "b": lambda: ops.tile_fwd(x, y, alpha, beta, theta, [], ps, kappa),
                "c": lambda: ops.tile_fwd_grad(x, y, alpha, beta, theta, [], ps, kappa),
                "d": lambda: ops.tile_fwd(x, y, alpha, beta, theta, [], lse, kappa),
            }, args.repeats)
            ta, tb, tc, td = t["a"], t["b"], t["c"], t["d"]
            extra = ""
            if kind == "cosine":
                cosine_c = tc
            elif cosine_c:
                extra = f"  c/cosine c = {tc / cosine_c:.2f}"
            print(f"{kind:>10} {n:>6} {ta:8.3f} {tb:11.3f} {tc:13.3f} {td:12.3f} "
                  f"{tb / ta:5.2f} {tc / ta:5.2f} {td / ta:5.2f}{extra}", flush=True)
            # The fastest run of each: the least disturbed by other load on a shared machine.
            print(f"{'(min)':>17} {tmin['a']:8.3f} {tmin['b']:11.3f} {tmin['c']:13.3f} "
                  f"{tmin['d']:12.3f} {tmin['b'] / tmin['a']:5.2f} {tmin['c'] / tmin['a']:5.2f} "
                  f"{tmin['d'] / tmin['a']:5.2f}", flush=True)


if __name__ == "__main__":
    main()
