"""``flashnce-bench``: sweep N, d, geometries, dtypes and providers; table, JSON/CSV, plots.

Losses (``--loss``, see ``flashnce.bench.cases``): infonce (default), siglip, and the same-set
losses supcon (labels arange(N) // 4, temperature 0.1), ntxent (two views of N // 2 samples,
temperature 0.5) and uniformity (t = 2, normalised x; use ``-g sqeuclidean`` for the paper's
metric). Every loss walks an N x N matrix, so times at one N compare across losses and with
the GEMM of that N.

The default run is the memory wall on CPU: symmetric cosine InfoNCE, fp32, d=128,
N in {1024, 2048, 4096, 8192}, flashnce (backend "auto") against the materialised loss, with a
plain GEMM of the same shape as the yardstick. It takes about a minute on 2 cores.

    flashnce-bench                                   # the default sweep, saved + table
    flashnce-bench --plot --out bench/results --name cpu_default
    flashnce-bench --providers all --geometry cosine lorentz --dtype float32 bfloat16
    flashnce-bench --loss supcon ntxent -p flashnce materialized pml
    flashnce-bench --loss uniformity -g sqeuclidean -p flashnce pdist --mem-limit 8G
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import re
import sys
import time
from pathlib import Path

import torch

from . import cases as C
from . import measure as M
from . import report as R

DEFAULT_N = (1024, 2048, 4096, 8192)
DEFAULT_PROVIDERS = ("flashnce", "materialized")
FAILURES = ("oom", "timeout", "error")


def _mem_bytes(text: str) -> int | None:
    """'none' | 'auto' | '512M' | '4G' | '4GiB' | '1.5GB' | bytes -> bytes (None: no cap)."""
    t = text.strip().lower()
    if t in ("none", "0", "off"):
        return None
    if t == "auto":  # half of what is available now: fail fast rather than swap
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024 // 2
        except OSError:
            return None
        return None
    m = re.fullmatch(r"([0-9.]+)\s*([kmgt]?)(i?b)?", t)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot parse memory size {text!r} (try 512M, 4G)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * mult)


def expand_providers(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for p in name.split(","):
            p = p.strip()
            if not p:
                continue
            if p == "all":
                group = ["flashnce", *(f"flashnce-{b}" for b in C.FLASHNCE_BACKENDS),
                         *C.BASELINES, *C.PEERS]
            elif p == "peers":
                group = list(C.PEERS)
            elif p == "flashnce-all":
                group = [f"flashnce-{b}" for b in C.FLASHNCE_BACKENDS]
            elif p in C.provider_names():
                group = [p]
            else:
                raise SystemExit(f"flashnce-bench: unknown provider {p!r}; choose from "
                                 f"{', '.join(C.provider_names())}, all, peers, flashnce-all")
            out += [g for g in group if g not in out]
    return out


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {v}")
    return v


def _nonnegative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _device(text: str) -> str:
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, "
                                         "cuda:1)")
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device type {dev.type!r} is not benchmarked "
                                         "(cpu or cuda)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("--device cuda: CUDA is not available here")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="flashnce-bench",
        description="Benchmark flashnce InfoNCE / SigLIP / SupCon / NT-Xent / uniformity "
                    "against the materialised loss, torch.compile and installed peers: time "
                    "(fwd, bwd, fwd+bwd), peak memory, GFLOP/s.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("-n", "--n", type=_positive_int, nargs="+", default=list(DEFAULT_N),
                    help="batch sizes N (x and y are [N, d])")
    ap.add_argument("-d", "--d", type=_positive_int, nargs="+", default=[128],
                    help="feature dims")
    ap.add_argument("--loss", nargs="+", default=["infonce"], choices=list(C.LOSSES),
                    help="losses to run: infonce; siglip (scale 10, bias -10); supcon "
                         "(x [N, d], labels arange(N) // 4, temperature 0.1); ntxent (z1, z2 "
                         "= x[:N//2], y[:N//2], temperature 0.5); uniformity (t = 2, "
                         "normalised x; the paper's metric is -g sqeuclidean)")
    ap.add_argument("-g", "--geometry", nargs="+", default=["cosine"],
                    choices=list(__import__("flashnce").GEOMETRIES))
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=list(C.DTYPES))
    ap.add_argument("-p", "--providers", nargs="+", default=list(DEFAULT_PROVIDERS),
                    help="flashnce (backend auto), flashnce-<triton|cuda|cpu|torch>, "
                         "materialized, compiled, open_clip, pykeops, inf_cl (infonce / "
                         "siglip), pml (pytorch-metric-learning: supcon / ntxent), pdist "
                         "(uniformity); or all, peers, flashnce-all")
    ap.add_argument("--no-gemm", action="store_true",
                    help="do not measure the plain-GEMM yardstick (no x GEMM ratios)")
    ap.add_argument("--device", type=_device,
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", type=float, default=None,
                    help="logit scale (default: infonce 1/0.07 for cosine, 1 otherwise; "
                         "siglip 10; supcon 10 and ntxent 2, i.e. 1 / temperature; "
                         "uniformity t = 2)")
    ap.add_argument("--warmup", type=_nonnegative_int, default=1,
                    help="untimed passes per case")
    ap.add_argument("--repeats", type=_positive_int, default=3, help="timed passes per case")
    ap.add_argument("--timeout", type=_positive_float, default=120.0,
                    help="seconds per case (warm-up + timed passes); the case is killed")
    ap.add_argument("--mem-limit", type=_mem_bytes, default="auto",
                    help="CPU: cap on a case's memory above its inputs (e.g. 4G); 'auto' = "
                         "half the available memory, 'none' = no cap")
    ap.add_argument("--threads", type=_positive_int, default=None,
                    help="torch intra-op threads")
    ap.add_argument("--in-process", action="store_true",
                    help="measure in this process (no memory cap, soft timeout, less clean "
                         "CPU memory numbers)")
    ap.add_argument("--keep-going-larger", action="store_true",
                    help="after a provider fails (oom/timeout) at some N, still try larger N")
    ap.add_argument("-o", "--out", default="flashnce-bench-results",
                    help="directory for <name>.json / .csv / .png")
    ap.add_argument("--name", default=None, help="file stem (default: <device>_<timestamp>)")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    ap.add_argument("--plot", action="store_true", help="also write PNG plots (matplotlib)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--report", metavar="JSON", default=None,
                    help="do not run: print the table of a saved run (and --plot it next to it)")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- progress

class _Progress:
    """tqdm when installed, else a one-line counter on stderr."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.quiet, self.bar = total, 0, quiet, None
        if quiet:
            return
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self.bar = None
        self.t0 = time.monotonic()

    def describe(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_description_str(text)
        else:
            self._line(text + " ...", final=False)

    def step(self, label: str, outcome: str) -> None:
        self.done += 1
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_description_str(label)
            self.bar.set_postfix_str(outcome)
            self.bar.update(1)
        else:
            self._line(f"{label}: {outcome}", final=True)

    def _line(self, text: str, final: bool) -> None:
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        elapsed = time.monotonic() - self.t0
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{elapsed:5.0f}s  {text}")
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
        elif final:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- sweep

def build_cases(args) -> list[C.Case]:
    providers = expand_providers(args.providers)
    if not args.no_gemm:
        providers = ["gemm", *[p for p in providers if p != "gemm"]]
    out = []
    for loss in args.loss:
        for geometry in args.geometry:
            for dtype in args.dtype:
                for d in args.d:
                    for n in sorted(set(args.n)):
                        for p in providers:
                            out.append(C.Case(provider=p, n=n, d=d, geometry=geometry,
                                              dtype=dtype, device=args.device,
                                              scale=args.scale, loss=loss))
    return out


def _row(case: C.Case, res: dict) -> dict:
    row = {"loss": case.loss, "provider": case.provider, "geometry": case.geometry,
           "dtype": case.dtype,
           "device": case.device, "n": case.n, "d": case.d, "backend": None, "note": None}
    row.update(res)
    return row


def _derive(rows: list[dict]) -> None:
    """GFLOP/s and ratios to the GEMM measured for the same shape in this run."""
    gemm = {(R.group_key(r), r["n"]): r["fwd_ms"] for r in rows
            if r["provider"] == "gemm" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        if r["provider"] == "gemm":
            r["gflops"] = C.flops(r["n"], r["n"], r["d"], "fwd") / r["fwd_ms"] / 1e6
            r["gemm_ms"] = r["fwd_ms"]
            continue
        full = r.get("full_ms")
        if full and math.isfinite(full):
            r["gflops"] = C.flops(r["n"], r["n"], r["d"], "full") / full / 1e6
        g = gemm.get((R.group_key(r), r["n"]))
        if g:
            r["gemm_ms"] = g
            r["fwd_x_gemm"] = r["fwd_ms"] / g
            r["full_x_gemm"] = full / g if full else None


def run_sweep(args) -> list[dict]:
    cases = build_cases(args)
    opts = M.Options(warmup=args.warmup, repeats=args.repeats, timeout=args.timeout,
                     mem_limit=args.mem_limit, threads=args.threads,
                     isolate=not args.in_process)
    availability: dict[tuple, str | None] = {}
    failed_at: dict[tuple, tuple[str, int]] = {}
    rows = []
    progress = _Progress(len(cases), args.quiet)
    try:
        for case in cases:
            label = (f"{case.loss} {case.provider} {case.geometry} {case.dtype} d={case.d} "
                     f"N={case.n}")
            akey = (case.loss, case.provider, case.geometry, case.dtype, case.d, case.device)
            if akey not in availability:
                availability[akey] = C.unavailable_reason(case)
            reason = availability[akey]
            if reason is None and akey in failed_at and not args.keep_going_larger:
                status, n = failed_at[akey]
                reason = f"not run: {status} at N={n}"
            if reason is not None:
                rows.append(_row(case, {"status": "skipped", "note": reason}))
                progress.step(label, "skipped")
                continue
            progress.describe(label)
            res = M.run_case(case, opts)
            rows.append(_row(case, res))
            if res.get("traceback") and not args.quiet:
                sys.stderr.write(f"\n{label} failed:\n{res['traceback']}\n")
            if res["status"] in FAILURES:
                failed_at.setdefault(akey, (res["status"], case.n))
                progress.step(label, res["status"])
            else:
                progress.step(label, f"{res['full_ms']:.1f} ms, {res['peak_mib']:.1f} MiB")
    finally:
        progress.close()
    _derive(rows)
    return rows


def _report_only(args) -> int:
    path = Path(args.report)
    if not path.is_file():
        raise SystemExit(f"flashnce-bench: --report {args.report}: no such file")
    try:
        doc = R.load_json(path)
        env, rows = doc["environment"], doc["rows"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"flashnce-bench: --report {args.report} is not a flashnce-bench "
                         f"result file ({type(exc).__name__}: {exc})")
    print(R.format_table(rows))
    print("\n".join(R.memory_wall(rows) + R.value_check(rows)))
    if args.plot:
        stem = Path(args.report).with_suffix("")
        print("wrote " + ", ".join(os.fspath(p) for p in R.plot(rows, stem, env)))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        return _report_only(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    env = R.environment(args.device)
    if args.threads:
        env["threads"] = args.threads
    rows = run_sweep(args)
    env["sweep_wall_s"] = round(time.monotonic() - started, 1)
    env["load_average_end"] = R.load_average()
    print()
    print(f"flashnce-bench on {env['device_name']} ({env['threads']} threads), torch "
          f"{env['torch_version']}, flashnce {env['flashnce_version']} @ "
          f"{(env['git_sha'] or 'unknown')[:10]}, {env['sweep_wall_s']:.0f} s, load average "
          f"{env['load_average_start']} -> {env['load_average_end']}\n")
    print(R.format_table(rows))
    print("\n".join(R.memory_wall(rows) + R.value_check(rows)))
    if not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = args.name or (f"{args.device.replace(':', '')}_"
                             f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
        config = {k: v for k, v in vars(args).items() if k not in ("out", "name", "quiet")}
        written = [out / f"{name}.json", out / f"{name}.csv"]
        R.write_json(written[0], env, config, rows)
        R.write_csv(written[1], env, rows)
        if args.plot:
            written += R.plot(rows, out / name, env)
        print("wrote " + ", ".join(os.fspath(p) for p in written))
    elif args.plot:
        print("--plot needs saving: drop --no-save", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
