"""Measure the `torch` backend's symmetric-InfoNCE forward+backward time against one GEMM.

    python bench/torch_backend_ratio.py [--n 8192] [--d 512] [--repeats 3]

Writes bench/results/torch_backend_ratio.json: median seconds of the flashnce torch backend
(fwd+bwd), of one x @ y.T of the same shape, their ratio, and the machine it ran on.
"""

import argparse
import json
import os
import statistics
import time

import torch

import flashnce
from flashnce.bench.report import environment


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--geometry", default="cosine")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "torch_backend_ratio.json"))
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g).requires_grad_()
    y = torch.randn(args.n, args.d, generator=g).requires_grad_()

    def fused():
        x.grad = y.grad = None
        flashnce.infonce(x, y, geometry=args.geometry, scale=14.3, backend="torch").backward()

    xd, yd = x.detach(), y.detach()
    gemm_s, gemm_all = median_seconds(lambda: xd @ yd.T, max(args.repeats, 5))
    fused_s, fused_all = median_seconds(fused, args.repeats)
    row = dict(
        case="symmetric infonce fwd+bwd, torch backend", geometry=args.geometry,
        n=args.n, d=args.d, dtype="float32", threads=torch.get_num_threads(),
        fused_median_s=fused_s, fused_times_s=fused_all,
        gemm_median_s=gemm_s, gemm_times_s=gemm_all, ratio_to_gemm=fused_s / gemm_s,
        environment=environment("cpu"),
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(row, f, indent=2)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
