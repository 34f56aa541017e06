"""SupCon "in" vs "out" forward + backward on the CPU (many small classes: 4 rows per class),
best of two, written as JSON with the machine: the cost of the per-class lse over positives.

    python bench/supcon_variant_bench.py --n 8192 --d 512 --out bench/results/supcon_variants_cpu_amd.json
"""

import argparse
import json
import platform
import subprocess
import time

import torch

import flashnce


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


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
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    result = dict(cpu_model=cpu_model(), threads=torch.get_num_threads(),
                  torch_version=torch.__version__, git_sha=sha.strip(), n=args.n, d=args.d,
                  per_class=args.per_class, seconds=best)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
