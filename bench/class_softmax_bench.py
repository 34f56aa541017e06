"""ArcFace / CosFace against a million class centres, next to one-way InfoNCE of the same shape.

    python bench/class_softmax_bench.py [--n 4096] [--classes 1000000] [--d 512]
        [--providers arcface infonce] [--repeats 1] [--warmup 1]
        [--out bench/results/<file>.json]

Each provider runs in a fresh child process (so peak memory is its own): x [N, d] and the
centres [C, d] as fp32 leaves requiring grad, labels uniform in [0, C); ``--warmup``
untimed forward + backward passes, then ``--repeats`` timed ones. Recorded per provider: the median
forward + backward seconds, and the peak RSS above the inputs during a timed pass minus the
gradients it creates (x.grad and centres.grad: (N + C) d floats), i.e. the memory the loss
needs beyond inputs and gradients. The materialised N x C logits would be N C 4 bytes
(16 GB at N = 4096, C = 10^6) before their softmax and gradient.

    arcface   flashnce.margin_softmax(x, centres, labels, margin_type="arcface")  s=64, m=0.5
    cosface   flashnce.margin_softmax(..., margin_type="cosface")                 s=64, m=0.35
    infonce   flashnce.infonce(x, centres, symmetric=False, targets=labels, scale=64)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

MIB = 2**20


def _loss(provider):
    import flashnce

    if provider in ("arcface", "cosface"):
        return lambda x, w, lab: flashnce.margin_softmax(x, w, lab, margin_type=provider,
                                                         scale=64.0, backend="cpu")
    if provider == "infonce":
        return lambda x, w, lab: flashnce.infonce(x, w, symmetric=False, targets=lab,
                                                  scale=64.0, backend="cpu")
    raise SystemExit(f"unknown provider {provider!r}")


def child(provider, n, c, d, repeats, warmup):
    from flashnce.bench.measure import CpuPeak

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).requires_grad_(True)
    w = torch.randn(c, d, generator=g).requires_grad_(True)
    labels = torch.randint(0, c, (n,), generator=g)
    fn = _loss(provider)
    times, peaks, value = [], [], None
    for rep in range(warmup + repeats):
        x.grad = w.grad = None
        tracker = CpuPeak()
        tracker.start()
        t0 = time.perf_counter()
        loss = fn(x, w, labels)
        loss.backward()
        elapsed = time.perf_counter() - t0
        peak = tracker.peak_bytes()
        value = float(loss.detach())
        print(f"  {provider} pass {rep} ({'warm-up' if rep < warmup else 'timed'}): "
              f"{elapsed:.1f} s, loss {value:.4f}", file=sys.stderr, flush=True)
        if rep >= warmup:
            times.append(elapsed)
            peaks.append(peak)
    grads = (n + c) * d * 4
    return dict(provider=provider, n=n, classes=c, d=d, loss_value=value,
                fwd_bwd_s=statistics.median(times), times_s=times,
                peak_above_inputs_mib=max(peaks) / MIB, gradients_mib=grads / MIB,
                beyond_inputs_and_gradients_mib=(max(peaks) - grads) / MIB,
                mem_method=CpuPeak().method)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--classes", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--providers", nargs="+", default=["arcface", "infonce"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.classes, args.d, args.repeats,
                               args.warmup)))
        return
    from flashnce.bench.report import environment, save_result

    rows = []
    for provider in args.providers:
        print(f"{provider}: N={args.n} C={args.classes} d={args.d}", file=sys.stderr,
              flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--child", provider, "--n", str(args.n), "--classes",
             str(args.classes), "--d", str(args.d), "--repeats", str(args.repeats),
             "--warmup", str(args.warmup)],
            check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    infonce = [r["fwd_bwd_s"] for r in rows if r["provider"] == "infonce"]
    base = statistics.median(infonce) if infonce else None
    print(f"{'provider':>9} {'fwd+bwd s':>10} {'x infonce':>10} {'peak MiB':>9} "
          f"{'beyond in+grad MiB':>19}")
    for r in rows:
        r["x_infonce"] = r["fwd_bwd_s"] / base if base else None
        ratio = f"{r['x_infonce']:.3f}" if base else "-"
        print(f"{r['provider']:>9} {r['fwd_bwd_s']:>10.1f} {ratio:>10} "
              f"{r['peak_above_inputs_mib']:>9.0f} {r['beyond_inputs_and_gradients_mib']:>19.1f}")
    result = dict(rows=rows, environment=environment("cpu"))
    if args.out:
        save_result(args.out, result)


if __name__ == "__main__":
    main()
