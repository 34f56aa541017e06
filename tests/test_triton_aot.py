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
the compiler refuses. Registers, spills (from ptxas' own report) and shared memory of each
kernel are printed (run with ``-s``), not asserted: a compile error fails, spills do not.
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
_INDEX = {"R0", "R1", "R2"}
_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _variants(launch, spec, which, kind, dtype) -> list[dict]:
    """Distinct compile-time argument sets the launchers issue for one (pass, kind, dtype)."""
    seen = {}
    for stat, rel, flags, swapped in itertools.product(
            range(len(spec.STATS)), range(len(spec.RELATIONS)), range(spec.ALL_FLAGS + 1),
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


def _compile(triton, launch, which, meta, dtype, dtype_name, arch):
    """Compile one specialisation: (registers, spill store bytes, spill load bytes, shared
    memory bytes)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = launch._tile_fwd_kernel if which == "fwd" else launch._tile_bwd_kernel
    blocks, warps, stages = launch.block_config(which, dtype, K)
    constexprs = {**meta, **blocks}
    sig = {}
    for name in kernel.arg_names:
        sig[name] = ("constexpr" if name in constexprs else "*" + dtype_name
                     if name in _OPERANDS else "*fp32" if name in _FP32 else "*i64"
                     if name in _INDEX else "i32")
    log = io.StringIO()
    # ptxas' -v report is printed only when asked for; read it instead of re-running ptxas.
    with triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        triton.knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(ASTSource(kernel, sig, constexprs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=warps, num_stages=stages))
    regs, spills = _REGS.search(log.getvalue()), _SPILLS.search(log.getvalue())
    return (int(regs.group(1)) if regs else None,
            *(map(int, spills.groups()) if spills else (None, None)),
            int(compiled.metadata.shared))


def work(names: list[str]) -> dict:
    """{group: [(variant, regs, spill stores, spill loads, shared bytes, error or None),
    ...]}."""
    assert "TRITON_INTERPRET" not in os.environ
    import torch
    import triton

    from flashnce.core import spec
    from flashnce.triton_kernels import launch

    assert not launch.INTERPRETED
    assert spec.stat_id("lse") == _STAT_LSE
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    out = {}
    for name in names:
        arch, which, dtype_name, kind_name = name.split("-")
        arch, kind, dtype = int(arch[2:]), spec.kind_id(kind_name), dtypes[dtype_name]
        rows = []
        for meta in _variants(launch, spec, which, kind, dtype):
            if not _selected(spec, arch, dtype_name, kind, meta):
                continue
            try:
                rows.append((_describe(spec, meta),
                             *_compile(triton, launch, which, meta, dtype, dtype_name, arch),
                             None))
            except Exception as exc:  # reported per variant by the test
                rows.append((_describe(spec, meta), None, None, None, None,
                             f"{type(exc).__name__}: {exc}"[:4000]))
        out[name] = rows
    return out


if __name__ == "__main__":
    print(json.dumps(work(json.loads(sys.argv[1]))))
    sys.exit(0)


# ---- pytest side ----------------------------------------------------------------------------

import pytest  # noqa: E402

pytest.importorskip("triton")


def _run_workers(names: list[str]) -> dict:
    """Compile ``names`` in FLASHNCE_AOT_JOBS subprocesses (round-robin split)."""
    jobs = max(1, min(int(os.environ.get("FLASHNCE_AOT_JOBS", "2")), len(names)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [subprocess.Popen([sys.executable, __file__, json.dumps(names[i::jobs])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(jobs)]
    results = {}
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"AOT worker failed ({proc.returncode}):\n{stderr[-4000:]}")
        results.update(json.loads(stdout.strip().splitlines()[-1]))
    return results


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
    return results


@pytest.mark.parametrize("group", groups())
def test_compiles(compiled, group):
    rows = compiled[group]
    assert rows, "no specialisation compiled"
    print(f"\n{group} (variant:regs/spill-store bytes/shared bytes): "
          + " ".join(f"{v}:{r}r/{s}s/{sh}B" for v, r, s, _, sh, err in rows if err is None))
    errors = [f"{v}: {err}" for v, _, _, _, _, err in rows if err is not None]
    assert not errors, "\n".join(errors)
