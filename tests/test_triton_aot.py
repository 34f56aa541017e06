"""Ahead-of-time compilation of every Triton kernel specialisation, for sm_80 and sm_90.

The Triton interpreter accepts code the compiler refuses (a module constant that is not a
``tl.constexpr`` is the classic case), so the interpreter tests alone do not show that the
kernels build for a GPU. This module compiles them with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``, which runs the whole
pipeline (TTIR, TTGIR, LLVM, PTX, ptxas) without a device.

What is compiled: the (pass x kind x stat x relation x flags x side) specialisations the
launchers issue (``launch.specialisation``, the one place they are derived; passes fwd, bwd
and fwd_grad, the backward kernel with FWD_GRAD, for the stats with a local G), per operand
dtype, in the default block configs (K = 128, so BLOCK_K and BLOCK_D are the configs' own).
One compile takes ~2 s of CPU, and the full product is 2 archs x 3 dtypes x 5 kinds x
(22 variants x 3 stats x 2 passes + 22 fwd_grad variants) = 4620 compiles (~2.5 CPU-hours),
too slow for CI. The default matrix (122 compiles: lse's 82, pair_sum's 20 and masked_sum's
20) is therefore, on both sm_80 and sm_90:
    * lse: every kind x pass in bf16, and every dtype for the hyperbolic kind (the largest
      epilogue), with relation none and no flags (the hot path);
    * lse, for the hyperbolic kind in bf16, both passes: on sm_90 every relation x flags x
      side; on sm_80 every relation x side with all its flags set (the architecture changes
      the MMA lowering, not the relation code);
    * pair_sum, relation none and no flags: fwd, bwd and fwd_grad for the hyperbolic kind in
      bf16, and on sm_90 fwd_grad for every kind in bf16;
    * pair_sum on sm_90, hyperbolic bf16, fwd and fwd_grad: every relation x side whose
      positives are kept (the positive-role code, ``POSITIVES``), with SKIP_SELF set (the
      bwd pass runs the same relation and stat code as fwd_grad; with SKIP_POSITIVES the
      relation code is lse's);
    * masked_sum (no fwd_grad), hyperbolic, fwd and bwd: relation none and no flags in fp32
      and bf16; in bf16 with SKIP_SELF, every relation x side whose positives are kept on
      sm_90 (the positive-role code of the fold and of G), csr on sm_80.
FLASHNCE_AOT_FULL=1 compiles the full product on both architectures.

The compiles run in worker subprocesses (``FLASHNCE_AOT_JOBS``, default 2) started without
TRITON_INTERPRET: the test session sets it before anything imports Triton, and then Triton's
own ``tl.standard`` helpers (the reductions' combine functions) are interpreted functions that
the compiler refuses.

Each kernel is compiled in the config the launcher issues on that architecture
(``launch.block_config``: the dtype default or a ``launch.CONFIG_RULES`` exception) and must
pass ``check``:
    * at most 255 registers and **zero spill stores** (ptxas' own -v report; it is kept
      next to the kernel in Triton's cache, so a cached kernel keeps its report);
    * ``metadata.shared`` within the per-block opt-in limit (sm_80: 163 KiB, sm_90: 227 KiB);
    * bf16 / fp16 operands: 16-bit tensor-core MMAs in the PTX of the same compile
      (``mma.sync``; on sm_90 ``wgmma``);
    * fp32 operands: TF32 MMAs only where the launcher's INPUT_PRECISION allows them
      (``torch.backends.cuda.matmul.allow_tf32``; off in the default matrix: IEEE FMAs).
So a change that adds a spill or loses the tensor cores fails here. ``test_checker_*``
show the checker refusing deliberate mutations (two compiles), and
``test_config_rule_matches_oracle`` runs each retuned config in the interpreter against the
float64 oracle. Run with ``-s`` for the per-kernel table; FLASHNCE_AOT_REPORT=path writes
every kernel's row as JSON (bench/results/gpu_compile_report.json).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time

from _ptxas import MAX_REGS, REGS, SPILLS  # tests/ is on the path as a test and as a worker

ARCHS = (80, 90)
PASSES = ("fwd", "bwd", "fwd_grad")
DTYPE_NAMES = ("fp32", "bf16", "fp16")
K = 128
KAPPA = 1e-6
FULL = os.environ.get("FLASHNCE_AOT_FULL", "0") not in ("", "0")


def groups() -> list[str]:
    """One test per (arch, pass, dtype, kind) with something to compile, named like
    ``sm90-bwd-bf16-hyperbolic``."""
    from flashnce.core import spec  # imports nothing

    return [f"sm{a}-{w}-{d}-{k}" for a, w, d, k in itertools.product(ARCHS, PASSES, DTYPE_NAMES,
                                                                      spec.KINDS)
            if _group_selected(a, w, d, k)]


def _group_selected(arch, which, dtype_name, kind_name) -> bool:
    """Whether the default matrix (module docstring) compiles anything in this group."""
    if FULL:
        return True
    if which == "fwd_grad":
        return dtype_name == "bf16" and (arch == 90 or kind_name == "hyperbolic")
    return dtype_name == "bf16" or kind_name == "hyperbolic"


# ---- worker side: runs in a subprocess without TRITON_INTERPRET ------------------------------

# Pointer arguments by name; every other non-constexpr argument is an int.
_OPERANDS = {"A", "B", "DA"}
_FP32 = {"SA", "SB", "THETA", "OUT", "ST_A", "ST_B", "G_A", "G_B", "DSA", "PART"}
_STAT_LSE = 0  # spec.stat_id("lse"), checked in work()
# The stats the Triton kernels implement (flashnce.backends.triton.TritonBackend.stats; not
# imported here: the workers load the kernels without the package's dispatch).
TRITON_STATS = ("lse", "pair_sum", "masked_sum")
_INDEX = {"R0", "R1", "R2"}
# mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, wgmma.mma_async.sync.aligned.m64n64k16
# .f32.bf16.bf16 (the operand types follow the accumulator's).
_MMA = re.compile(r"\b(?:mma\.sync|wgmma\.mma_async)\.[\w.]+")
_MMA_16BIT = re.compile(r"\.(?:bf16|f16)\b")
_PTXAS_FILE = "flashnce_ptxas.json"
# Opt-in maximum dynamic shared memory per block: 163 KiB on sm_80, 227 KiB on sm_90.
SHARED_LIMIT = {80: 166912, 90: 232448}


def _variants(launch, spec, which, kind, dtype) -> list[dict]:
    """Distinct compile-time argument sets the launchers issue for one (pass, kind, dtype)."""
    seen = {}
    for stat, rel, flags, swapped in itertools.product(
            [spec.stat_id(s) for s in TRITON_STATS], range(len(spec.RELATIONS)),
            range(spec.ALL_FLAGS + 1),
            (False, True)):
        if which == "fwd_grad" and not launch.has_fwd_grad(stat):
            continue
        meta = launch.specialisation(which, kind, stat, rel, flags, swapped, dtype, KAPPA)
        seen.setdefault(tuple(sorted(meta.items())), meta)
    return list(seen.values())


def _selected(spec, arch, dtype_name, kind, meta) -> bool:
    """Whether the default matrix (module docstring) compiles this specialisation."""
    if FULL:
        return True
    hyperbolic = kind == spec.kind_id("hyperbolic")
    plain = meta["RELATION"] == spec.relation_id("none") and not meta["SKIP_SELF"]
    if meta["STAT"] != _STAT_LSE:
        return _selected_other_stat(spec, arch, dtype_name, kind, meta, plain)
    if meta.get("FWD_GRAD"):
        return False
    if plain and (dtype_name == "bf16" or hyperbolic):
        return True
    if not (hyperbolic and dtype_name == "bf16"):
        return False
    if arch == 90:
        return True
    # sm_80: every flag that can matter for the relation is on.
    return meta["SKIP_SELF"] and (meta["SKIP_POSITIVES"]
                                  or meta["RELATION"] == spec.relation_id("none"))


def _selected_other_stat(spec, arch, dtype_name, kind, meta, plain) -> bool:
    """pair_sum's and masked_sum's part of the default matrix (module docstring)."""
    hyperbolic = kind == spec.kind_id("hyperbolic")
    if meta["STAT"] == spec.stat_id("masked_sum"):
        if not hyperbolic:
            return False
        if plain:
            return dtype_name in ("fp32", "bf16")
        return (dtype_name == "bf16" and meta["POSITIVES"] and meta["SKIP_SELF"]
                and (arch == 90 or meta["RELATION"] == spec.relation_id("csr")))
    if dtype_name != "bf16":
        return False
    fwd_grad = meta.get("FWD_GRAD", False)
    if plain:
        return hyperbolic or (fwd_grad and arch == 90)
    return (arch == 90 and hyperbolic and ("FWD_GRAD" not in meta or fwd_grad)
            and meta["POSITIVES"] and meta["SKIP_SELF"])


def _describe(spec, meta) -> str:
    flags = "".join(f for f, on in (("S", meta["SKIP_SELF"]), ("P", meta["SKIP_POSITIVES"]),
                                    ("w", meta["SWAPPED"])) if on)
    stat = "" if meta["STAT"] == _STAT_LSE else spec.STATS[meta["STAT"]] + ":"
    return stat + spec.RELATIONS[meta["RELATION"]] + ("+" + flags if flags else "")


def _ptx_mma(ptx: str) -> dict:
    """Tensor-core instructions in the PTX: mma.sync (sm_80's MMAv2, also sm_90's fallback)
    and wgmma (sm_90's MMAv3) counts, the 16-bit-operand ones among them, and the TF32 ones."""
    instrs = _MMA.findall(ptx)
    return dict(mma_sync=sum(i.startswith("mma.sync") for i in instrs),
                wgmma=sum(i.startswith("wgmma") for i in instrs),
                mma_16bit=sum(bool(_MMA_16BIT.search(i)) for i in instrs),
                tf32=sum(".tf32" in i for i in instrs),
                mma_kinds=sorted(set(instrs)))


def _compile_with_report(triton, src, target, options):
    """(compiled kernel, its ptxas report {regs, spill_stores, spill_loads}).

    ptxas' -v report is printed only when asked for and only when ptxas runs, not when the
    kernel comes from Triton's cache; so the report is kept next to the cached kernel
    (``_PTXAS_FILE``, same cache key: source, options, target, ptxas version), and a kernel
    cached without one is compiled once more with the cache bypassed."""
    from triton.runtime.cache import get_cache_manager

    def run(always):
        log = io.StringIO()
        with (triton.knobs.nvidia.scope(), triton.knobs.compilation.scope(),
              contextlib.redirect_stdout(log)):
            triton.knobs.nvidia.dump_ptxas_log = True
            triton.knobs.compilation.always_compile = always
            compiled = triton.compile(src, target=target, options=options)
        regs, spills = REGS.search(log.getvalue()), SPILLS.search(log.getvalue())
        if not (regs and spills):
            return compiled, None
        stores, loads = map(int, spills.groups())
        return compiled, dict(regs=int(regs.group(1)), spill_stores=stores, spill_loads=loads)

    compiled, report = run(False)
    cache = get_cache_manager(compiled.hash)
    if report is None:
        path = cache.get_file(_PTXAS_FILE)
        if path is not None:
            with open(path) as f:
                return compiled, json.load(f)
        compiled, report = run(True)
    if report is None:
        return compiled, dict(regs=None, spill_stores=None, spill_loads=None)
    cache.put(json.dumps(report), _PTXAS_FILE, binary=False)
    return compiled, report


def _compile(triton, launch, spec, which, meta, dtype, dtype_name, arch, sig_dtype=None):
    """Compile one specialisation in the config the launcher issues on ``arch``: a report
    row (registers, spill store / load bytes, shared memory bytes, the PTX's tensor-core
    instructions). ``sig_dtype`` compiles the operands as another dtype (the mutation test)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = launch._tile_fwd_kernel if which == "fwd" else launch._tile_bwd_kernel
    blocks, warps, stages = launch.block_config(which, dtype, K, stat=meta["STAT"],
                                                kind=meta["KIND"], arch=arch,
                                                relation=meta["RELATION"])
    constexprs = {**meta, **blocks}
    sig = {}
    for name in kernel.arg_names:
        sig[name] = ("constexpr" if name in constexprs else "*" + (sig_dtype or dtype_name)
                     if name in _OPERANDS else "*fp32" if name in _FP32 else "*i64"
                     if name in _INDEX else "i32")
    compiled, ptxas = _compile_with_report(
        triton, ASTSource(kernel, sig, constexprs), GPUTarget("cuda", arch, 32),
        dict(num_warps=warps, num_stages=stages))
    return dict(arch=arch, pass_=which, dtype=dtype_name, kind=spec.KINDS[meta["KIND"]],
                variant=_describe(spec, meta),
                config=[*blocks.values(), warps, stages], **ptxas,
                shared=int(compiled.metadata.shared),
                tf32_allowed=meta["INPUT_PRECISION"] != "ieee",
                **_ptx_mma(compiled.asm["ptx"]), error=None)


def check(row: dict) -> list[str]:
    """What is wrong with one compiled kernel (empty: nothing): a compile error, no ptxas
    report, registers > 255 or any spill store, shared memory past the architecture's
    per-block limit, a 16-bit kernel without 16-bit tensor-core MMAs (wgmma on sm_90), TF32
    MMAs the caller did not allow, or none where it did."""
    if row["error"] is not None:
        return [row["error"]]
    if row["regs"] is None or row["spill_stores"] is None:
        return ["no ptxas -v report (was the kernel taken from a cache?)"]
    bad = []
    if row["regs"] > MAX_REGS:
        bad.append(f"{row['regs']} registers > {MAX_REGS}")
    if row["spill_stores"]:
        bad.append(f"{row['spill_stores']} bytes of spill stores "
                   f"({row['spill_loads']} bytes of spill loads)")
    if row["shared"] > SHARED_LIMIT[row["arch"]]:
        bad.append(f"{row['shared']} bytes of shared memory > sm_{row['arch']}'s "
                   f"{SHARED_LIMIT[row['arch']]}")
    if row["dtype"] in ("bf16", "fp16"):
        if not row["mma_16bit"]:
            bad.append(f"no 16-bit tensor-core MMA in the PTX (found {row['mma_kinds']})")
        elif row["arch"] >= 90 and not row["wgmma"]:
            bad.append(f"no wgmma on sm_{row['arch']} (found {row['mma_kinds']})")
    if row["tf32"] and not row["tf32_allowed"]:
        bad.append(f"{row['tf32']} TF32 MMAs, but the caller did not allow TF32")
    if row["dtype"] == "fp32" and row["tf32_allowed"] and not row["tf32"]:
        bad.append("TF32 allowed, but no TF32 MMA in the PTX")
    return bad


def _error_row(spec, arch, which, dtype_name, kind, meta, exc) -> dict:
    return dict(arch=arch, pass_=which, dtype=dtype_name, kind=spec.KINDS[kind],
                variant=_describe(spec, meta), error=f"{type(exc).__name__}: {exc}"[:4000])


def _setup():
    assert "TRITON_INTERPRET" not in os.environ
    import torch
    import triton

    from flashnce.core import spec
    from flashnce.triton_kernels import launch

    assert not launch.INTERPRETED
    assert spec.stat_id("lse") == _STAT_LSE
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return torch, triton, spec, launch, dtypes


def work(names: list[str]) -> dict:
    """{group: [report row (``_compile``), ...]}."""
    torch, triton, spec, launch, dtypes = _setup()
    out = {}
    for name in names:
        arch, which, dtype_name, kind_name = name.split("-")
        arch, kind, dtype = int(arch[2:]), spec.kind_id(kind_name), dtypes[dtype_name]
        rows = []
        for meta in _variants(launch, spec, which, kind, dtype):
            if not _selected(spec, arch, dtype_name, kind, meta):
                continue
            try:
                rows.append(_compile(triton, launch, spec, which, meta, dtype, dtype_name,
                                     arch))
            except Exception as exc:  # reported per variant by the test
                rows.append(_error_row(spec, arch, which, dtype_name, kind, meta, exc))
        out[name] = rows
    return out


def mutations() -> dict:
    """Two deliberately broken compiles for ``test_checker_flags_mutations``:
    ``no_tensor_cores``: the bf16 dot-kind forward (sm_90) with its operands compiled as
    fp32, so its IEEE dot runs on FMA units; reported as the bf16 kernel.
    ``tf32``: the fp32 dot-kind forward (sm_80) with the INPUT_PRECISION the launcher picks
    when torch.backends.cuda.matmul.allow_tf32 is set."""
    torch, triton, spec, launch, dtypes = _setup()
    kind = spec.kind_id("dot")
    bf16 = launch.specialisation("fwd", kind, _STAT_LSE, 0, 0, False, torch.bfloat16, KAPPA)
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        fp32 = launch.specialisation("fwd", kind, _STAT_LSE, 0, 0, False, torch.float32,
                                     KAPPA)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return dict(
        no_tensor_cores=_compile(triton, launch, spec, "fwd", bf16, torch.bfloat16, "bf16",
                                 90, sig_dtype="fp32"),
        tf32=_compile(triton, launch, spec, "fwd", fp32, torch.float32, "fp32", 80))


if __name__ == "__main__":
    if sys.argv[1] == "mutations":
        print(json.dumps(mutations()))
    else:
        print(json.dumps(work(json.loads(sys.argv[1]))))
    sys.exit(0)


# ---- pytest side ----------------------------------------------------------------------------

import pytest  # noqa: E402

pytest.importorskip("triton")


def _run_workers(args: list[str]) -> dict:
    """Compile in FLASHNCE_AOT_JOBS worker subprocesses: ``args`` are group names (split
    round-robin), or ["mutations"]."""
    jobs = max(1, min(int(os.environ.get("FLASHNCE_AOT_JOBS", "2")), len(args)))
    if args == ["mutations"]:
        argv = [["mutations"]]
    else:
        argv = [[json.dumps(args[i::jobs])] for i in range(jobs)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [subprocess.Popen([sys.executable, __file__, *a], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in argv]
    results = {}
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"AOT worker failed ({proc.returncode}):\n{stderr[-4000:]}")
        results.update(json.loads(stdout.strip().splitlines()[-1]))
    return results


def _write_report(path: str, results: dict) -> None:
    """FLASHNCE_AOT_REPORT: every compiled kernel's row, sorted, as JSON."""
    import triton

    rows = sorted((r for rows in results.values() for r in rows),
                  key=lambda r: (r["arch"], r["pass_"], r["dtype"], r["kind"], r["variant"]))
    rows = [{("pass" if k == "pass_" else k): v for k, v in r.items()} for r in rows]
    for r in rows:
        r["ok"] = not check({("pass_" if k == "pass" else k): v for k, v in r.items()})
    with open(path, "w") as f:
        json.dump(dict(triton=triton.__version__, K=K, full=FULL, max_regs=MAX_REGS,
                       shared_limit=SHARED_LIMIT, kernels=rows), f, indent=1)
        f.write("\n")


@pytest.fixture(scope="module")
def compiled(request):
    """Results of every selected test's group, compiled once up front."""
    names = [item.callspec.params["group"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_compiles"
             and item.module.__name__ == __name__]
    start = time.perf_counter()
    results = _run_workers(names)
    n = sum(len(rows) for rows in results.values())
    print(f"\nAOT: {n} kernels compiled in {time.perf_counter() - start:.0f} s")
    if os.environ.get("FLASHNCE_AOT_REPORT"):
        _write_report(os.environ["FLASHNCE_AOT_REPORT"], results)
    return results


@pytest.mark.parametrize("group", groups())
def test_compiles(compiled, group):
    """Every kernel of the group compiles and passes ``check``: no spills, registers and
    shared memory within the limits, tensor cores for 16-bit operands, TF32 only if asked."""
    rows = compiled[group]
    assert rows, "no specialisation compiled"
    print(f"\n{group} (variant:regs/spill-store bytes/shared bytes/mma.sync+wgmma): "
          + " ".join(f"{r['variant']}:{r['regs']}r/{r['spill_stores']}s/{r['shared']}B/"
                     f"{r['mma_sync']}+{r['wgmma']}" for r in rows if r["error"] is None))
    bad = [f"{r['variant']}: {'; '.join(check(r))}" for r in rows if check(r)]
    assert not bad, "\n".join(bad)


def test_checker_limits():
    """The checker flags spills, registers and shared memory past the limits (no compile)."""
    row = dict(arch=80, pass_="bwd", dtype="bf16", kind="hyperbolic", variant="none",
               regs=255, spill_stores=0, spill_loads=0, shared=SHARED_LIMIT[80], mma_sync=8,
               wgmma=0, mma_16bit=8, tf32=0, tf32_allowed=False, mma_kinds=[], error=None)
    assert check(row) == []
    for change, what in ((dict(spill_stores=8, spill_loads=8), "spill"),
                         (dict(regs=256), "registers"), (dict(shared=SHARED_LIMIT[80] + 1),
                                                         "shared memory"),
                         (dict(arch=90, shared=SHARED_LIMIT[80] + 1), "wgmma"),
                         (dict(regs=None), "ptxas")):
        bad = check({**row, **change})
        assert len(bad) == 1 and what in bad[0], (change, bad)


def test_checker_flags_mutations():
    """Two real compiles that ``check`` must refuse (``mutations``): a bf16 kernel whose dot
    lost its tensor cores, and an fp32 kernel with TF32 MMAs the caller did not allow."""
    out = _run_workers(["mutations"])
    lost = out["no_tensor_cores"]
    assert lost["error"] is None and not lost["mma_16bit"] and not lost["wgmma"], lost
    assert any("no 16-bit tensor-core MMA" in b for b in check(lost)), check(lost)
    tf32 = out["tf32"]
    assert tf32["error"] is None and tf32["tf32"] and tf32["tf32_allowed"], tf32
    assert not [b for b in check(tf32) if "TF32" in b], check(tf32)  # allowed: accepted
    bad = check({**tf32, "tf32_allowed": False})  # as if the caller had not allowed it
    assert any("TF32 MMAs, but the caller did not allow" in b for b in bad), bad


def _rule_cases():
    """One interpreter case per ``launch.CONFIG_RULES`` rule: (id, pass, stat, kind, dtype,
    relation case of tests/_tile_cases.py, config), without repeats."""
    import torch

    from flashnce.triton_kernels import launch

    cases = []
    for pattern, config in launch.CONFIG_RULES:
        first = {f: v[0] if isinstance(v, tuple) else v for f, v in pattern.items()}
        which, dtype = first["which"], first["dtype"] or torch.bfloat16
        stat = first["stat"] or ("pair_sum" if which == "fwd_grad" else "masked_sum")
        kind = first["kind"] or "hyperbolic"
        case = {"csr": "csr_self", None: "labels_self"}.get(pattern["relation"],
                                                            f"{pattern['relation']}_self")
        cases.append((f"{which}-{stat}-{kind}-{str(dtype)[6:]}-{case}-"
                       + "x".join(map(str, config)), which, stat, kind, dtype, case, config))
    return list(dict.fromkeys(cases))


@pytest.mark.parametrize("case", _rule_cases(), ids=[c[0] for c in _rule_cases()])
def test_config_rule_matches_oracle(case):
    """Each retuned config (``launch.CONFIG_RULES``), run by the interpreter on a problem of
    several row and column blocks with kept positives, against the float64 oracle."""
    import torch

    from _tile_cases import TOL, check_grad, check_stat, make_problem, oracle
    from flashnce.triton_kernels import launch

    if not launch.INTERPRETED:
        pytest.skip("needs the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET)")
    _, which, stat, kind, dtype, rel_case, config = case
    x, y, alpha, beta, theta, tspec, g_row, g_col = make_problem(
        kind, rel_case, dtype, (70, 45, 20), stat=stat)
    rel = tspec.relation
    args = (x, y, alpha, beta, theta.float(), list(rel.tensors),
            rel.options(kind, stat, y.shape[0]), tspec.kappa)
    if which == "fwd_grad":
        g_row, g_col = torch.ones_like(g_row), torch.zeros_like(g_col)
    want_row, want_col, want_grads = oracle(x, y, alpha, beta, theta, tspec, g_row, g_col)
    if which == "fwd_grad":
        row, col, *grads = launch.tile_forward_grad(*args, config=config)
    else:
        row, col = launch.tile_forward(*args, config=config if which == "fwd" else None)
        grads = (launch.tile_backward(*args, row, col, g_row.float(), g_col.float(),
                                      config=config) if which == "bwd" else ())
    t_stat, t_grad = TOL[dtype]
    check_stat("row_stat", row, want_row, t_stat)
    check_stat("col_stat", col, want_col, t_stat)
    for name, got, want in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads,
                               want_grads):
        check_grad(name, got, want, t_grad)
