"""Speed of two source trees of flashnce in one run: the no-regression check of a change.

Each tree (a checkout with its compiled extension built in place, e.g.
``git worktree add /tmp/base <commit> && cd /tmp/base && python setup.py build_ext --inplace``)
runs in its own child processes (``PYTHONPATH=<tree>/python``); the children alternate between
the trees, round after round, so a busy machine slows both alike. In every child a case is
symmetric InfoNCE forward + backward on the ``cpu`` backend, fp32, timed interleaved with one
N x d . d x N ``torch.mm``; the figure compared is that ratio (minimum over rounds).

    python bench/compare_commits.py --base /tmp/base --new . --rounds 2

Writes bench/results/compare_<base>_<new>_<cpu>.json with both trees' ratios per case, their
relative difference, and the machine stamp (CPU model and flags, torch, threads, load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, sys, time, torch, flashnce
from flashnce import _extension
n, d, geometry, reps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
g = torch.Generator().manual_seed(0)
x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
if geometry == "lorentz":
    x, y = x / d**0.5, y / d**0.5
def step(a, b):
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    flashnce.infonce(a, b, geometry=geometry, scale=14.3, backend="cpu").backward()
def wall(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t
step(x[:1024].clone(), y[:1024].clone()); torch.mm(x[:1024], y[:1024].T)
gemm, ours = [], []
for _ in range(reps):
    gemm.append(wall(lambda: torch.mm(x, y.T)))
    ours.append(wall(lambda: step(x, y)))
    gemm.append(wall(lambda: torch.mm(x, y.T)))
print(json.dumps(dict(gemm_s=min(gemm), flashnce_s=min(ours), ratio=min(ours) / min(gemm),
                      variant=_extension.cpu_variant(), file=flashnce.__file__)))
"""


def git_sha(tree):
    try:
        return subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def run_child(tree, n, d, geometry, reps):
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.abspath(tree), "python"))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(d), geometry, str(reps)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="source tree of the previous commit")
    p.add_argument("--new", default=os.path.dirname(HERE), help="source tree of this commit")
    p.add_argument("--geometry", nargs="+", default=["cosine", "lorentz"])
    p.add_argument("--n", nargs="+", type=int, default=[4096, 16384])
    p.add_argument("--d", nargs="+", type=int, default=[128, 512])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.abspath(args.new), "python"))
    from flashnce.bench.report import environment

    trees = {"base": args.base, "new": args.new}
    shas = {k: git_sha(v) for k, v in trees.items()}
    rows = []
    for geometry in args.geometry:
        for n in args.n:
            for d in args.d:
                runs = {"base": [], "new": []}
                for r in range(args.rounds):
                    order = ("base", "new") if r % 2 == 0 else ("new", "base")
                    for which in order:
                        runs[which].append(run_child(trees[which], n, d, geometry, args.reps))
                best = {k: min(v, key=lambda row: row["ratio"]) for k, v in runs.items()}
                row = dict(geometry=geometry, n=n, d=d,
                           base_ratio=best["base"]["ratio"], new_ratio=best["new"]["ratio"],
                           base_s=best["base"]["flashnce_s"], new_s=best["new"]["flashnce_s"],
                           gemm_s=min(b["gemm_s"] for v in runs.values() for b in v),
                           change=best["new"]["ratio"] / best["base"]["ratio"] - 1.0,
                           variant=best["new"]["variant"], rounds=args.rounds)
                rows.append(row)
                print(f"{geometry:8s} N={n:6d} d={d:4d}  base {row['base_ratio']:.2f}x GEMM  "
                      f"new {row['new_ratio']:.2f}x GEMM  change {100 * row['change']:+.1f}%",
                      flush=True)
    env = environment("cpu")
    out = args.out or os.path.join(
        HERE, "results", f"compare_{shas['base']}_{shas['new']}_"
        f"{env.get('cpu_model', 'cpu').split()[0].lower()}.json")
    with open(out, "w") as f:
        json.dump(dict(environment=env, trees=shas, loadavg_end=os.getloadavg(),
                       finished=time.strftime("%Y-%m-%d %H:%M:%S"), rows=rows), f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
