"""Results as data: the environment stamp, JSON / CSV files, the on-screen table and plots."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

SCHEMA = "flashnce-bench/1"
ROW_FIELDS = (
    "loss", "provider", "backend", "geometry", "dtype", "device", "n", "d", "status",
    "fwd_ms", "fwd_p20_ms", "fwd_p80_ms", "bwd_ms", "bwd_p20_ms", "bwd_p80_ms",
    "full_ms", "full_p20_ms", "full_p80_ms", "peak_mib", "baseline_mib", "mem_method",
    "gflops", "gemm_ms", "fwd_x_gemm", "full_x_gemm", "loss_value", "repeats", "wall_s",
    "note",
)
ENV_FIELDS = ("device_name", "cpu_model", "cpu_flags", "threads", "torch_version", "triton_version",
              "flashnce_version", "git_sha", "git_dirty", "timestamp")


# --------------------------------------------------------------------------- environment

def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction-set flags that decide which kernel paths a CPU can take.
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "avx512_vnni",
              "amx_tile", "amx_bf16", "amx_fp16", "amx_int8")


def cpu_flags() -> str:
    """The ISA flags of /proc/cpuinfo that matter here, space-separated ('' if unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in _ISA_FLAGS if flag in have)
    except OSError:
        pass
    return ""


def _git(*args: str) -> str | None:
    import flashnce
    here = Path(flashnce.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def load_average() -> list[float] | None:
    """1/5/15-minute load: times taken on a busy machine are not comparable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment(device: str) -> dict:
    """Everything needed to compare two runs later: hardware, versions, commit."""
    import flashnce
    status = _git("status", "--porcelain", "--untracked-files=no")
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = cpu_model()
    return {
        "device": device,
        "device_name": device_name,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "triton_version": _version("triton"),
        "flashnce_version": getattr(flashnce, "__version__", None),
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": load_average(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "flashnce_backends": backend_availability(device),
    }


def backend_availability(device: str) -> dict[str, str]:
    """Each flashnce kernel backend on this device (cosine, fp32): "usable" or why not."""
    from .cases import FLASHNCE_BACKENDS, Case, unavailable_reason
    out = {}
    for b in FLASHNCE_BACKENDS:
        reason = unavailable_reason(Case(provider=f"flashnce-{b}", n=8, d=8, device=device))
        out[b] = "usable" if reason is None else reason
    return out


# --------------------------------------------------------------------------- files

def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(path: Path, env: dict, config: dict, rows: list[dict]) -> None:
    doc = {"schema": SCHEMA, "environment": env, "config": config,
           "rows": [{k: _clean(r.get(k)) for k in ROW_FIELDS} for r in rows]}
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


def save_result(path, result: dict) -> None:
    """A standalone bench script's result (its own layout, with ``environment(...)`` in it) as
    JSON at ``path`` (folders created); says where it went."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def write_csv(path: Path, env: dict, rows: list[dict]) -> None:
    """One row per case, each stamped with the environment (Liger's BenchmarkDataCSVRow idea)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*ROW_FIELDS, *ENV_FIELDS])
        w.writeheader()
        for r in rows:
            row = {k: _clean(r.get(k)) for k in ROW_FIELDS}
            row.update({k: env.get(k) for k in ENV_FIELDS})
            w.writerow(row)


def load_json(path) -> dict:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- table

def group_key(r: dict) -> tuple:
    return (r.get("loss", "infonce"), r["geometry"], r["dtype"], r["d"], r["device"])


def group_title(key: tuple) -> str:
    loss, geometry, dtype, d, device = key
    return f"{loss}, {geometry}, {dtype}, d={d}, {device}"


def _ms(r, mode):
    v = r.get(f"{mode}_ms")
    if v is None or not math.isfinite(v):
        return "-"
    lo, hi = r.get(f"{mode}_p20_ms"), r.get(f"{mode}_p80_ms")
    text = _fmt(v)
    if mode == "full" and lo is not None and hi is not None and r.get("repeats", 0) > 1:
        text += f" ({_fmt(lo)}-{_fmt(hi)})"
    return text


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def format_table(rows: list[dict]) -> str:
    """A markdown table per (loss, geometry, dtype, d, device) group; skipped rows listed
    after."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    header = ("| provider | backend | N | status | fwd ms | bwd ms | fwd+bwd ms (p20-p80) "
              "| peak MiB | GFLOP/s | x GEMM |")
    for key, grows in groups.items():
        shown = [r for r in grows if r["status"] != "skipped"]
        out.append(f"{group_title(key)}\n")
        if shown:
            out += [header,
                    "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in sorted(shown, key=lambda r: (r["n"], _provider_order(r["provider"]))):
            ok = r["status"] == "ok"
            x_gemm = r.get("full_x_gemm") if r["provider"] != "gemm" else 1.0
            out.append("| " + " | ".join([
                r["provider"], r.get("backend") or "", str(r["n"]), r["status"],
                _ms(r, "fwd") if ok else "-",
                _ms(r, "bwd") if ok else "-",
                _ms(r, "full") if ok else "-",
                _fmt(r.get("peak_mib"), 3) if ok else "-",
                _fmt(r.get("gflops"), 3) if ok else "-",
                _fmt(x_gemm, 3) if ok else "-",
            ]) + " |")
        notes = [r for r in grows if r["status"] != "ok" and r.get("note")]
        seen = set()
        for r in notes:
            line = f"- {r['provider']}" + ("" if r["status"] == "skipped" else f" N={r['n']}") \
                   + f" {r['status']}: {r['note']}"
            if line not in seen:
                seen.add(line)
                out.append(("\n" if len(seen) == 1 else "") + line)
        out.append("")
    return "\n".join(out)


def _times(theirs: float, ours: float, better: str, worse: str) -> str:
    ratio = theirs / max(ours, 1e-9)
    return f"{ratio:.2g}x {better}" if ratio >= 1 else f"{1 / max(ratio, 1e-9):.2g}x {worse}"


# The losses each flashnce row is held against in the summary lines (where they ran).
_WALL_BASELINES = ("materialized", "pml", "pdist")


def memory_wall(rows: list[dict]) -> list[str]:
    """One line per group and baseline: flashnce against the materialised loss (and the
    pytorch-metric-learning / torch.pdist peers of the same-set losses) at the largest N both
    ran."""
    lines = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    for key, grows in groups.items():
        ok = {(r["provider"], r["n"]): r for r in grows if r["status"] == "ok"}
        ours = sorted(p for p in {r["provider"] for r in grows} if p.startswith("flashnce"))
        for base in _WALL_BASELINES:
            compared = False
            for p in ours:
                common = [n for (q, n) in ok if q == p and (base, n) in ok]
                if not common:
                    continue
                n = max(common)
                a, b = ok[(p, n)], ok[(base, n)]
                lines.append(
                    f"{group_title(key)}, N={n}: {p} ({a.get('backend')}) "
                    f"{a['peak_mib']:.1f} MiB, {a['full_ms']:.0f} ms vs {base} "
                    f"{b['peak_mib']:.1f} MiB, {b['full_ms']:.0f} ms: "
                    + _times(b["peak_mib"], a["peak_mib"], "less memory", "more memory") + ", "
                    + _times(b["full_ms"], a["full_ms"], "faster", "slower"))
                compared = True
            if not compared:
                continue
            failed = [r for r in grows if r["provider"] == base
                      and r["status"] in ("oom", "timeout")]
            for r in failed:
                lines.append(f"  {base} at N={r['n']}: {r['status']}")
    return lines


def value_check(rows: list[dict], rtol: float = 1e-3) -> list[str]:
    """Warnings where the loss providers of one case (group and N) disagree on the loss value
    by more than ``rtol`` (relative to the largest magnitude): they should compute the same
    loss. Rows without a value (the gemm yardstick, old result files) are ignored."""
    lines = []
    cases: dict[tuple, list[dict]] = {}
    for r in rows:
        v = r.get("loss_value")
        if r["status"] == "ok" and isinstance(v, (int, float)) and math.isfinite(v):
            cases.setdefault((group_key(r), r["n"]), []).append(r)
    for (key, n), crows in cases.items():
        values = [r["loss_value"] for r in crows]
        spread = max(values) - min(values)
        if spread > rtol * max(max(abs(v) for v in values), 1e-30):
            lines.append(f"WARNING {group_title(key)}, N={n}: loss values disagree: " + ", ".join(
                f"{r['provider']} {r['loss_value']:.6g}" for r in crows))
    return lines


_ORDER = ("gemm", "flashnce", "materialized", "compiled", "open_clip", "pykeops", "inf_cl",
          "pml", "pdist")


def _provider_order(p: str) -> tuple:
    base = "flashnce" if p.startswith("flashnce") else p
    return (_ORDER.index(base) if base in _ORDER else len(_ORDER), p)


# --------------------------------------------------------------------------- plots

_LOSS_TITLES = {"infonce": "InfoNCE", "siglip": "SigLIP", "supcon": "SupCon",
                "ntxent": "NT-Xent", "uniformity": "uniformity"}
_N_LABELS = {"infonce": "N (batch = rows of x and of y)",
             "siglip": "N (batch = rows of x and of y)",
             "supcon": "N (rows of x; 4 per class)",
             "ntxent": "N (rows of cat(z1, z2): 2 views x N/2)",
             "uniformity": "N (rows of x)"}


def plot(rows: list[dict], prefix: Path, env: dict | None = None) -> list[Path]:
    """One PNG per (loss, geometry, dtype, d, device) group: fwd+bwd time and peak memory against
    N, log-log, one line per provider; failed points (oom / timeout) are marked with an x."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    paths = []
    for key, grows in groups.items():
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
        providers = sorted({r["provider"] for r in grows}, key=_provider_order)
        for i, p in enumerate(providers):
            pr = sorted((r for r in grows if r["provider"] == p), key=lambda r: r["n"])
            ok = [r for r in pr if r["status"] == "ok"]
            failed = [r for r in pr if r["status"] in ("oom", "timeout", "error")]
            color = f"C{i}"
            style = "--" if p == "gemm" else "-"
            label = p
            backends = {r.get("backend") for r in ok if r.get("backend")}
            if p.startswith("flashnce") and backends:
                label += f" ({', '.join(sorted(backends))})"
            if ok:
                ns = [r["n"] for r in ok]
                ax_t.plot(ns, [r["full_ms"] for r in ok], style, marker="o", color=color,
                          label=label + (" (forward only)" if p == "gemm" else ""))
                if p != "gemm":
                    ax_m.plot(ns, [max(r["peak_mib"], 1e-2) for r in ok], style, marker="o",
                              color=color, label=label)
            for r in failed:  # at the top edge: x in data, y in axes coordinates
                for ax in (ax_t, ax_m) if p != "gemm" else (ax_t,):
                    ax.plot([r["n"]], [0.95], "x", color=color, markersize=9,
                            transform=ax.get_xaxis_transform())
                    ax.annotate(r["status"], (r["n"], 0.95), xycoords=ax.get_xaxis_transform(),
                                fontsize=7, textcoords="offset points", xytext=(5, -3),
                                color=color)
        mat = sorted((r for r in grows if r["provider"] == "materialized"
                      and r["status"] == "ok"), key=lambda r: r["n"])
        if mat:  # an N^2 guide through the materialised loss's last point
            n_all = sorted({r["n"] for r in grows})
            n1, m1 = mat[-1]["n"], mat[-1]["peak_mib"]
            ax_m.plot(n_all, [m1 * (n / n1) ** 2 for n in n_all], ":", color="gray",
                      label="~ N^2")
        n_ticks = sorted({r["n"] for r in grows})
        for ax, title, ylabel in ((ax_t, "forward + backward time", "ms (median)"),
                                  (ax_m, "peak memory above inputs", "MiB")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(n_ticks, [str(n) for n in n_ticks])
            ax.set_yscale("log")
            ax.set_xlabel(_N_LABELS.get(key[0], _N_LABELS["infonce"]))
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        sub = group_title(key)
        if env:
            sub += f" | {env.get('device_name')}, {env.get('threads')} threads, " \
                   f"torch {env.get('torch_version')}"
        fig.suptitle(f"flashnce {_LOSS_TITLES.get(key[0], key[0])}: {sub}", fontsize=10)
        fig.tight_layout()
        path = Path(f"{prefix}.png") if len(groups) == 1 else Path(
            f"{prefix}_{key[0]}_{key[1]}_{key[2]}_d{key[3]}_{key[4].replace(':', '')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
