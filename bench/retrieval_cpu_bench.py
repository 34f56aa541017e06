"""Exact retrieval metrics (both directions) on the cpu backend next to one GEMM of the same shape.

    python bench/retrieval_cpu_bench.py [--n 32768] [--d 512] [--repeats 3]
        [--out bench/results/retrieval_cpu_amd.json]

x [N, d] and y = x + noise * randn [N, d], fp32 (noise 5 at d = 512: the positive's cosine
~0.2, about the largest of N = 32768 random ones, so the ranks are not trivial). Timed, ``--repeats`` times each (median), in this
process:

    retrieval   flashnce.retrieval_metrics(x, y, backend="cpu"): paired cosine ranks of
                x -> y and y -> x from one walk of the ``count`` statistic (phase 1 on the
                diagonal tiles, phase 2 on every tile), recall@1/5/10 and mean / median rank
    mm          torch.mm(x, y.T): the N x N similarity matrix alone (what a materialised
                evaluation computes before it even sorts)

Peak RSS above the inputs (``flashnce.bench.measure.CpuPeak``) per call; the materialised
matrix alone is N^2 * 4 bytes (4 GiB at N = 32768). Where that exceeds the memory available
(MemAvailable), mm is not attempted (an overcommitted allocation would be killed later, not
refused) and its row says how much it would need.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

MIB = 2**20


def _timed(fn, repeats):
    from flashnce.bench.measure import CpuPeak

    times, peaks, out = [], [], None
    for _ in range(repeats):
        tracker = CpuPeak()
        tracker.start()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        peaks.append(tracker.peak_bytes())
        if isinstance(out, torch.Tensor):
            out = None  # free the N x N matrix before the next repeat
    return times, peaks, out


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--noise", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import flashnce

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g)
    y = x + args.noise * torch.randn(args.n, args.d, generator=g)
    rows = []
    need, avail = args.n * args.n * 4, _available_bytes()
    for name, fn in (("retrieval", lambda: flashnce.retrieval_metrics(x, y, backend="cpu")),
                     ("mm", lambda: torch.mm(x, y.T))):
        print(f"{name}: N={args.n} d={args.d}", file=sys.stderr, flush=True)
        if name == "mm" and avail is not None and need > avail:
            rows.append(dict(provider=name, n=args.n, d=args.d, status=(
                f"not run: the N x N fp32 matrix needs {need / 2**30:.1f} GiB, "
                f"{avail / 2**30:.1f} GiB available")))
            print(f"  {rows[-1]['status']}", file=sys.stderr, flush=True)
            continue
        times, peaks, out = _timed(fn, args.repeats)
        row = dict(provider=name, n=args.n, d=args.d, noise=args.noise,
                   median_s=statistics.median(times),
                   times_s=times, peak_above_inputs_mib=max(peaks) / MIB)
        if name == "retrieval":
            row.update(x_to_y_recall=out.x_to_y_recall, y_to_x_recall=out.y_to_x_recall,
                       x_to_y_mean_rank=out.x_to_y_mean_rank,
                       y_to_x_mean_rank=out.y_to_x_mean_rank,
                       x_to_y_median_rank=out.x_to_y_median_rank)
        rows.append(row)
        print(f"  median {row['median_s']:.2f} s, peak {row['peak_above_inputs_mib']:.1f} MiB",
              file=sys.stderr, flush=True)
    ratio = rows[0]["median_s"] / rows[1]["median_s"] if "median_s" in rows[1] else None
    print(f"retrieval / mm = {ratio:.3f}" if ratio else "retrieval / mm: mm not run")
    note = ("mm is torch.mm alone, including allocating and writing its N x N fp32 output; "
            "retrieval is the whole retrieval_metrics call (both directions, both phases)")
    from flashnce.bench.report import environment, save_result

    result = dict(rows=rows, retrieval_over_mm=ratio, note=note, environment=environment("cpu"),
                  command=" ".join([os.path.basename(sys.executable), *sys.argv]))
    if args.out:
        save_result(args.out, result)


if __name__ == "__main__":
    main()
