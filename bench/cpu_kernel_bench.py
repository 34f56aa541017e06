"""Benchmark of the compiled ``cpu`` backend: symmetric InfoNCE forward + backward, fp32.

Every time is divided by one N x d . d x N ``torch.mm`` measured in the same run (4 such GEMMs
are the floor of a memory-linear algorithm: forward, recompute, dX, dY). The kernel and the
GEMM are timed interleaved and the minimum of each is kept, so a busy machine hurts both alike.
Memory: peak RSS above the inputs, measured in a child process per case.

    python bench/cpu_kernel_bench.py                   # the committed sweep
    python bench/cpu_kernel_bench.py --n 4096 --d 128 --geometry cosine --reps 2

Writes bench/results/cpu_kernel_<cpu>_<date>.json (rows stamped with CPU model, torch version,
git SHA, threads, load average: ratios from a busy machine are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import flashnce
from flashnce.bench.measure import CHILD_MALLOC_ENV

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {"cosine": 4.5, "lorentz": 5.5}  # x GEMM at N = 16384, d = 512 (the CPU kernel targets)


def features(n, d, geometry, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if geometry == "lorentz":  # tangent vectors with hyperbolic radius ~ 1
        x = x / d**0.5
    return x


def step(x, y, geometry, backend):
    """One forward + backward of the loss; returns nothing (time it)."""
    xx, yy = x.detach().requires_grad_(), y.detach().requires_grad_()
    if backend == "materialised":
        loss = flashnce.reference_infonce(xx, yy, geometry=geometry, scale=14.3)
    else:
        loss = flashnce.infonce(xx, yy, geometry=geometry, scale=14.3, backend=backend)
    loss.backward()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds of all threads): on a shared machine the CPU time is
    the steadier of the two (it does not count time other processes hold the cores)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def time_case(n, d, geometry, reps, materialised):
    x, y = features(n, d, geometry, 0), features(n, d, geometry, 1)
    gemm = lambda: torch.mm(x, y.T)  # noqa: E731
    ours = lambda: step(x, y, geometry, "cpu")  # noqa: E731
    # Warm-up on a small problem (op loading, thread pool); large cases are not repeated for it.
    xs, ys = x[:1024].clone(), y[:1024].clone()
    torch.mm(xs, ys.T), step(xs, ys, geometry, "cpu")
    t_gemm, t_ours, t_mat = [], [], []
    for _ in range(reps):
        t_gemm.append(timed(gemm))
        t_ours.append(timed(ours))
        t_gemm.append(timed(gemm))
    mat_error = None
    if materialised:
        try:
            for _ in range(max(1, reps - 1)):
                t_mat.append(timed(lambda: step(x, y, geometry, "materialised")))
                t_gemm.append(timed(gemm))
        except (RuntimeError, MemoryError) as exc:  # the N x N logits did not fit: a result
            mat_error = str(exc).strip().splitlines()[-1][:300]
            t_mat = []
    wall = lambda ts: min(t[0] for t in ts)  # noqa: E731
    cput = lambda ts: min(t[1] for t in ts)  # noqa: E731
    row = dict(n=n, d=d, geometry=geometry, gemm_s=wall(t_gemm), cpu_s=wall(t_ours),
               ratio=wall(t_ours) / wall(t_gemm), gemm_cpu_time_s=cput(t_gemm),
               cpu_cpu_time_s=cput(t_ours), ratio_cpu_time=cput(t_ours) / cput(t_gemm),
               reps=reps, materialised_s=wall(t_mat) if t_mat else None)
    if mat_error:
        row["materialised_error"] = mat_error
    if t_mat:
        row["speedup_vs_materialised"] = row["materialised_s"] / row["cpu_s"]
        row["speedup_vs_materialised_cpu_time"] = cput(t_mat) / row["cpu_cpu_time_s"]
    return row


def _vm_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child_memory(n, d, geometry, backend, what="loss"):
    """Run in a child: peak RSS (bytes) above the RSS right after the inputs exist.

    what="loss": the whole loss forward + backward (prologue, autograd, kernel);
    what="kernel": the two ops alone on fp32 operands, minus their dX and dY outputs.
    The peak is VmHWM of this process image, not getrusage's ru_maxrss: that one survives
    fork + exec and would report the parent's RSS at fork time."""
    # Warm-up on a tiny problem first: library code paged in by the first call is not the
    # algorithm's memory.
    step(features(256, d, geometry, 0), features(256, d, geometry, 1), geometry, backend)
    x, y = features(n, d, geometry, 0), features(n, d, geometry, 1)
    x.add_(0), y.add_(0)  # touch every page
    if what == "loss":
        base = _vm_kib("VmRSS")
        step(x, y, geometry, backend)
        # The gradients dx, dy (as large as the inputs) are part of the peak.
        print(json.dumps({"peak_above_inputs": _vm_kib("VmHWM") - base,
                          "inputs": 2 * x.numel() * x.element_size(),
                          "gradients": 2 * x.numel() * x.element_size()}))
        return
    from flashnce.core.relation import Relation
    from flashnce.core.spec import NUM_ROW_SCALARS
    kind_name = flashnce.get_geometry(geometry).kind
    r = NUM_ROW_SCALARS[kind_name]
    a = torch.ones(n, r)
    if r == 3:
        a[:, 1:] = 0.5
    theta = torch.tensor([14.3, 1.0, 0.0])
    opts = Relation.none().options(kind_name, "lse", n)
    base = _vm_kib("VmRSS")
    rl, cl = torch.ops.flashnce.tile_fwd(x, y, a, a, theta, [], opts, 1e-6)
    grads = torch.ops.flashnce.tile_bwd(x, y, a, a, theta, [], opts, 1e-6, rl, cl, rl, cl)
    print(json.dumps({"kernel_workspace": _vm_kib("VmHWM") - base - 2 * x.numel() * 4}))
    del grads


def memory_case(n, d, geometry, backend="cpu"):
    result = {}
    for what in ("loss", "kernel"):
        code = ("import sys, torch; sys.path.insert(0, %r); torch.set_num_threads(2)\n"
                "import cpu_kernel_bench as b; b._child_memory(%d, %d, %r, %r, %r)"
                % (HERE, n, d, geometry, backend, what))
        # glibc's malloc settings of flashnce-bench: freed blocks go back to the OS, so the
        # peak RSS is the peak of live memory, not heap the allocator kept (runs varied by
        # tens of MiB without it).
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=3600, env={**os.environ, **CHILD_MALLOC_ENV})
        if out.returncode != 0:
            result[f"{what}_error"] = (out.stderr.strip().splitlines() or ["failed"])[-1]
            continue
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="*", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--d", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--geometry", nargs="*", default=["cosine", "lorentz"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-materialised-n", type=int, default=16384,
                    help="largest N for the materialised baseline (it needs ~12 N^2 bytes)")
    ap.add_argument("--skip", nargs="*", default=["32768x512"],
                    help="NxD cases to skip (default: 32768x512, ~30 min on 2 cores)")
    ap.add_argument("--memory-n", type=int, nargs="*", default=[32768])
    ap.add_argument("--memory-only", action="store_true",
                    help="only the child-process memory of each case (no timing)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from flashnce import _extension
    if not _extension.load():
        sys.exit(f"cpu backend unavailable: {_extension.why_unavailable()}")
    from flashnce.bench.report import environment  # the stamp flashnce-bench writes
    env = environment("cpu")
    stamp = dict(cpu=env["cpu_model"], torch=env["torch_version"], flashnce=flashnce.__version__,
                 git_sha=env["git_sha"], git_dirty=env["git_dirty"], threads=args.threads,
                 variant=_extension.cpu_variant(), date=env["timestamp"],
                 load_average_start=env["load_average_start"])
    rows = []
    for n in args.n:
        for d in args.d:
            if f"{n}x{d}" in args.skip:
                continue
            for geometry in args.geometry:
                row = (dict(n=n, d=d, geometry=geometry) if args.memory_only else
                       time_case(n, d, geometry, args.reps, n <= args.max_materialised_n))
                if n == 16384 and d == 512:
                    row["target_ratio"] = TARGETS.get(geometry)
                if n in args.memory_n or args.memory_only:
                    row["memory"] = memory_case(n, d, geometry)
                row.update(stamp)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in stamp}), flush=True)
    out = args.out or os.path.join(
        HERE, "results", "cpu_kernel_%s_%s.json" % (
            "".join(c if c.isalnum() else "-" for c in stamp["cpu"]).strip("-").lower(),
            stamp["date"][:10]))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"load average at the end: {os.getloadavg()}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
