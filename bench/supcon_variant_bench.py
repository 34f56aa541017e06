"""SupCon "in" vs "out" forward + backward on the CPU (many small classes: 4 rows per class),
best of two, written as JSON with the machine: the cost of the per-class lse over positives.

    python bench/supcon_variant_bench.py --n 8192 --d 512 --out bench/results/supcon_variants_cpu_amd.json
"""

import argparse
import time

import torch

import flashnce
from flashnce.bench.report import environment, save_result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    e = torch.randn(args.n, args.d, requires_grad=True)
    labels = torch.arange(args.n) // args.per_class
    flashnce.supcon(e[:256], labels[:256], variant="in").backward()  # warm-up
    best = {}
    for variant in ("in", "out") * 2:
        start = time.perf_counter()
        flashnce.supcon(e, labels, variant=variant).backward()
        best[variant] = min(best.get(variant, float("inf")), time.perf_counter() - start)
    print({k: round(v, 3) for k, v in best.items()})
    result = dict(environment=environment("cpu"), n=args.n, d=args.d,
                  per_class=args.per_class, seconds=best)
    if args.out:
        save_result(args.out, result)


if __name__ == "__main__":
    main()
