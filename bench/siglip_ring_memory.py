"""Per-rank memory of distributed SigLIP against the world size: flashnce's ring and gather
against open_clip's ``SigLipLoss`` (neighbour exchange, "bidir"), in the same run.

For each world size W (default 1, 2, 4) this spawns W gloo CPU processes (one thread each).
Every rank holds n_local rows of x and y (fp32, requires grad) and runs, per implementation,
one forward + backward, measuring the peak resident memory above the inputs
(``flashnce.bench.measure.CpuPeak``: the kernel's high-water mark, reset before each run) and
the wall time; the figure kept is the maximum over ranks. Per-rank memory of a memory-linear
ring is O(n_local d), flat in W; open_clip keeps every received block and its n_local^2 logits
alive for backward, so its memory grows with W.

    python bench/siglip_ring_memory.py --n-local 2048 -d 256 --worlds 1 2 4

Writes bench/results/siglip_ring_memory_<cpu>.json (machine stamp included) and prints a
table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ("flashnce-ring", "flashnce-gather", "open_clip-bidir")


def _run_impl(impl, x, y, rank, world, backend):
    import flashnce
    from flashnce.bench.cases import open_clip_loss_module

    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    if impl.startswith("flashnce"):
        mode = impl.split("-")[1]
        group = dist.group.WORLD if world > 1 else None
        loss = flashnce.siglip(x, y, scale=scale, bias=bias, geometry="dot", backend=backend,
                               group=group, group_mode=mode)
    else:
        oc = open_clip_loss_module()
        loss = oc.SigLipLoss(rank=rank, world_size=world, dist_impl="bidir")(x, y, scale, bias)
    loss.backward()
    return float(loss.detach())


def _worker(rank, world, store, n_local, d, backend, out_dir):
    from flashnce.bench.measure import CpuPeak

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=600))
    g = torch.Generator().manual_seed(rank)
    x = torch.nn.functional.normalize(torch.randn(n_local, d, generator=g), dim=-1)
    y = torch.nn.functional.normalize(x + 0.5 * torch.randn(n_local, d, generator=g), dim=-1)
    res = {}
    for impl in IMPLS:
        try:
            xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
            warm = [t[:64].detach().clone().requires_grad_() for t in (xs, ys)]
            _run_impl(impl, *warm, rank, world, backend)  # every rank: collectives match
            if world > 1:
                dist.barrier()
            tracker = CpuPeak()
            tracker.start()
            t0 = time.perf_counter()
            loss = _run_impl(impl, xs, ys, rank, world, backend)
            wall = time.perf_counter() - t0
            res[impl] = dict(peak_mib=tracker.peak_bytes() / 2**20, wall_s=wall, loss=loss,
                             method=tracker.method)
            del xs, ys
        except Exception as exc:  # reported, the other implementations still run
            res[impl] = dict(error=f"{type(exc).__name__}: {exc}"[:300])
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    if world > 1:
        dist.destroy_process_group()


def run_world(world, n_local, d, backend):
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(world, os.path.join(tmp, "store"), n_local, d,
                                          backend, tmp),
                           nprocs=world, start_method="spawn", join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    out = {}
    for impl in IMPLS:
        per = [r[impl] for r in ranks]
        errors = [p["error"] for p in per if "error" in p]
        if errors:
            out[impl] = dict(error=errors[0])
            continue
        out[impl] = dict(peak_mib=max(p["peak_mib"] for p in per),
                         wall_s=max(p["wall_s"] for p in per),
                         mean_loss=sum(p["loss"] for p in per) / world,
                         method=per[0]["method"])
    return out


def main(argv=None):
    sys.path.insert(0, os.path.join(HERE, "..", "python"))
    from flashnce.bench import report as R

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-local", type=int, default=2048)
    ap.add_argument("-d", type=int, default=256)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("-o", "--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    results = {}
    for w in args.worlds:
        results[w] = run_world(w, args.n_local, args.d, args.backend)
        print(f"W={w}: " + ", ".join(
            f"{k} {v['peak_mib']:.1f} MiB {v['wall_s']:.2f} s" if "peak_mib" in v
            else f"{k} error {v['error']}" for k, v in results[w].items()), flush=True)
    env = R.environment("cpu")
    doc = dict(environment=env, config=vars(args), inputs_mib_per_rank=2 * args.n_local *
               args.d * 4 / 2**20, results={str(w): r for w, r in results.items()})
    os.makedirs(args.out, exist_ok=True)
    cpu = "".join(c if c.isalnum() else "_" for c in env.get("cpu_model", "cpu"))[:24]
    path = os.path.join(args.out, f"siglip_ring_memory_{cpu}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nper-rank peak memory above the inputs (MiB), n_local={args.n_local}, d={args.d}")
    print("| W | " + " | ".join(IMPLS) + " |\n|---|" + "---|" * len(IMPLS))
    for w, r in results.items():
        print(f"| {w} | " + " | ".join(f"{r[i]['peak_mib']:.1f}" if "peak_mib" in r[i]
                                        else "error" for i in IMPLS) + " |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
