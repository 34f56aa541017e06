"""CUDA backend (csrc/cuda): compile checks, the kernels under CPU emulation, and the op matrix
on a GPU.

1. ``test_nvcc_compile_check`` compiles the torch-free CUDA core for sm_80 and sm_90 with
   csrc/cuda/check_compile.sh (CMake + Ninja, or plain nvcc) into a temporary directory. It runs
   whenever nvcc is on PATH, whatever torch is installed; FLASHNCE_NVCC_CHECK=0 skips it (e.g.
   when CI already ran the script as its own step).
   ``test_binding_parses`` parses the torch binding (csrc/cuda/tile_binding.cu) with the host
   compiler against the installed torch headers: the binding cannot be built with a CPU torch,
   but its use of the ATen / c10 API is checked.
   ``test_kernels_under_cpu_emulation`` (lse), ``test_pair_sum_under_cpu_emulation``
   (pair_sum, with tile_forward_grad) and ``test_masked_sum_under_cpu_emulation`` (masked_sum)
   run the kernels themselves, through the core's public entry points, on the CPU
   (csrc/cuda/emulation, built once per session; g++ and the CUDA headers needed;
   FLASHNCE_CUDA_EMULATION=0 skips) against a float64 evaluation of the contract: every
   relation, both flags, row-only columns, fully skipped rows / columns, bias and d_theta, every
   kind and dtype, shapes that are not tile multiples. ``test_masked_sum_against_dense_oracle``
   also feeds problems built here to the emulated core (``emulate op``) and checks them against
   the Python float64 oracle (``dense_tile_stat``, gradients by autograd).
2. On a GPU: the generated matrix (test_tile_ops.py) runs the cuda backend over every kind x
   relation case x dtype against the float64 dense oracle. Here, the ops called directly on
   CUDA tensors: several row / column blocks and K chunks (both stats, and tile_fwd_grad for
   pair_sum), determinism, argument errors and opcheck. Skipped, with the reason, without a
   CUDA device or CUDA kernels.
   FLASHNCE_CUDA_TESTS_ON=cpu runs that part on CPU tensors instead (the ops then dispatch to
   the CPU kernel): a self-check of this file's logic and tolerances on machines without a GPU.
"""

import json
import os
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flashnce import _extension, dispatch
from flashnce.core import spec

from _helpers import tile_spec
from _ptxas import check_resources, demangle, parse_ptxas_log, sass_functions
from _tile_cases import (TOL, check_against_oracle, check_forward_grad, check_grad, check_stat,
                         make_problem, oracle, relation_case)
from flashnce.backends.base import TileSpec
from flashnce.core.relation import Relation, dense_roles

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
CHECK_SCRIPT = CUDA_DIR / "check_compile.sh"
DRY_RUN = os.environ.get("FLASHNCE_CUDA_TESTS_ON", "") == "cpu"
DEVICE = "cpu" if DRY_RUN else "cuda"


# --------------------------------------------------------------------------------------------
# 1. Compile checks and CPU emulation (no GPU, no CUDA torch needed)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_core_build(tmp_path_factory):
    """The torch-free core built once per module by check_compile.sh: (build dir, stdout)."""
    if os.environ.get("FLASHNCE_NVCC_CHECK", "1") == "0":
        pytest.skip("FLASHNCE_NVCC_CHECK=0")
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        reason = "nvcc is not on PATH: the CUDA compile check needs a CUDA toolkit"
        print(reason)
        pytest.skip(reason)
    if shutil.which("bash") is None:
        pytest.skip("bash is not available to run csrc/cuda/check_compile.sh")
    build = tmp_path_factory.mktemp("cuda_core") / "build"
    start = time.monotonic()
    proc = subprocess.run(["bash", str(CHECK_SCRIPT), str(build)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (
        f"CUDA core failed to compile (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n"
        f"{proc.stderr[-6000:]}")
    print(f"nvcc compile check: {time.monotonic() - start:.0f} s")
    return build, proc.stdout


def test_nvcc_compile_check(cuda_core_build):
    assert "compiled for sm_80, sm_90" in cuda_core_build[1]


# Kernels whose p tile runs on tensor cores for 16-bit operands (tile_gemm.cuh: WMMA), as
# mangled-name pieces: the walk kernels, instantiated for __nv_bfloat16 / __half.
_WALK_KERNELS = ("tile_fwd_kernel", "tile_bwd_kernel")
_16BIT = ("13__nv_bfloat16", "6__half")
CUDA_REPORT = ROOT / "bench" / "results" / "cuda_compile_report.json"


def _kernel_rows(build: Path) -> list[dict]:
    """Every kernel's ptxas report (``_ptxas.parse_ptxas_log``) with its readable name and,
    where cuobjdump is found, whether its SASS has HMMA (tensor-core) instructions."""
    rows = parse_ptxas_log((build / "ptxas.log").read_text())
    names = demangle(sorted({r["name"] for r in rows}))
    sass = {}
    cuobjdump = _cuobjdump()
    if cuobjdump is not None:
        objects = sorted(build.rglob("*.cu.o")) or sorted(build.glob("*.o"))
        # only the 16-bit translation units: theirs is the HMMA question (and the dump of
        # the others would double this step's time)
        for obj in [o for o in objects if "bf16" in o.name or "f16" in o.name]:
            dump = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True,
                                  text=True, timeout=600)
            assert dump.returncode == 0, dump.stderr[-2000:]
            sass.update(sass_functions(dump.stdout))
    for r in rows:
        r["kernel"] = names[r["name"]]
        body = sass.get(r["name"])
        r["hmma"] = None if body is None else "HMMA" in body
    return rows


def _cuobjdump():
    """cuobjdump: on PATH, else the one Triton bundles (triton/backends/nvidia/bin)."""
    found = shutil.which("cuobjdump")
    if found is None:
        try:
            import triton
        except ImportError:
            return None
        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        found = str(bundled) if bundled.is_file() else None
    return found


def _baseline_spills() -> dict:
    """{(mangled name, arch): spill-store bytes} of the committed report: the kernels that
    spill today (to be retuned on a GPU); every other kernel must stay spill-free."""
    if not CUDA_REPORT.is_file():
        return {}
    rows = json.loads(CUDA_REPORT.read_text())["kernels"]
    return {(r["name"], r["arch"]): r["spill_stores"] for r in rows}


def test_cuda_kernel_resources(cuda_core_build):
    """ptxas' report of every kernel of the core on sm_80 and sm_90: registers <= 255, static
    shared memory <= 48 KiB, no spill store beyond the committed report's (a kernel not in it,
    or spill-free there, must have none), and HMMA in the SASS of every 16-bit walk kernel.
    FLASHNCE_CUDA_REPORT=path writes the rows as JSON (bench/results/cuda_compile_report.json)."""
    build, _ = cuda_core_build
    rows = _kernel_rows(build)
    assert {r["arch"] for r in rows} == {80, 90}, "expected kernels for sm_80 and sm_90"
    baseline = _baseline_spills()
    bad = []
    for r in rows:
        problems = check_resources(r, baseline.get((r["name"], r["arch"]), 0))
        is_walk = any(k in r["name"] for k in _WALK_KERNELS)
        if is_walk and any(t in r["name"] for t in _16BIT) and r["hmma"] is False:
            problems.append("no HMMA (tensor-core) instruction in its SASS")
        bad += [f"sm_{r['arch']} {r['kernel']}: {p}" for p in problems]
    spilling = [r for r in rows if r["spill_stores"]]
    print(f"\n{len(rows)} kernels; {len(spilling)} spill "
          f"({sum(r['spill_stores'] for r in spilling)} bytes of stores in all); "
          f"HMMA checked: {any(r['hmma'] is not None for r in rows)}")
    if os.environ.get("FLASHNCE_CUDA_REPORT"):
        Path(os.environ["FLASHNCE_CUDA_REPORT"]).write_text(json.dumps(dict(
            nvcc=subprocess.run([os.environ.get("NVCC", "nvcc"), "--version"],
                                capture_output=True, text=True).stdout.strip().splitlines()[-1],
            kernels=rows), indent=1) + "\n")
    assert not bad, "\n".join(bad[:40]) + (f"\n... {len(bad) - 40} more" if len(bad) > 40
                                            else "")


_SPILL_PROBE = r"""
// 64 live accumulators per thread: under -maxrregcount=24 ptxas must spill them.
extern "C" __global__ void spill_probe(const float* in, float* out, int n) {
  float acc[64];
#pragma unroll
  for (int k = 0; k < 64; ++k) acc[k] = in[threadIdx.x + k];
  for (int i = 0; i < n; ++i) {
#pragma unroll
    for (int k = 0; k < 64; ++k) acc[k] = acc[k] * acc[(k + 7) % 64] + in[i + k];
  }
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 64; ++k) s += acc[k];
  out[threadIdx.x] = s;
}
"""


def test_cuda_resource_check_flags_a_spilling_kernel(tmp_path):
    """The mutation: a kernel compiled with too few registers is reported as spilling, and
    the checker refuses it (and a 16-bit walk kernel without HMMA would be refused the same
    way: that branch is the same test on the parsed SASS)."""
    nvcc = shutil.which(os.environ.get("NVCC", "nvcc"))
    if nvcc is None or os.environ.get("FLASHNCE_NVCC_CHECK", "1") == "0":
        pytest.skip("nvcc is not on PATH (or FLASHNCE_NVCC_CHECK=0)")
    src = tmp_path / "probe.cu"
    src.write_text(_SPILL_PROBE)
    proc = subprocess.run([nvcc, "-O3", "-arch=sm_90", "-maxrregcount=24", "-Xptxas=-v", "-c",
                           str(src), "-o", str(tmp_path / "probe.o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (row,) = parse_ptxas_log(proc.stdout + proc.stderr)
    assert row["name"] == "spill_probe" and row["arch"] == 90 and row["regs"] <= 24
    assert row["spill_stores"] > 0
    assert any("spill stores" in p for p in check_resources(row))
    assert check_resources(row, baseline_spills=row["spill_stores"]) == []


def _cuda_include_dir():
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime.h").is_file():
            return Path(root) / "include"
    return None


def _host_compiler_or_skip():
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    include = _cuda_include_dir()
    if cxx is None or include is None:
        pytest.skip("needs a C++20 compiler (CXX or g++) and the CUDA toolkit headers "
                    "(CUDA_HOME or /usr/local/cuda)")
    return cxx, include


def test_binding_parses(tmp_path):
    """tile_binding.cu against the installed torch headers, host side only (-fsyntax-only).
    A CPU torch ships c10/cuda but not its generated c10/cuda/impl/cuda_cmake_macros.h, which
    only holds build-configuration macros: an empty stand-in is used when it is missing."""
    cxx, include = _host_compiler_or_skip()
    from torch.utils.cpp_extension import include_paths

    torch_inc = [Path(p) for p in include_paths()]
    if not any((p / "c10" / "cuda" / "CUDAGuard.h").is_file() for p in torch_inc):
        pytest.skip("the installed torch has no c10/cuda headers")
    stub = tmp_path / "stub"
    if not any((p / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file()
               for p in torch_inc):
        (stub / "c10" / "cuda" / "impl").mkdir(parents=True)
        (stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text("#pragma once\n")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-x", "c++", "-Wall", "-Werror",
           "-Wno-missing-field-initializers", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
           "-DTORCH_EXTENSION_NAME=_C_cuda", f"-I{stub}", f"-I{ROOT / 'csrc'}", f"-I{CUDA_DIR}"]
    for p in torch_inc + [Path(sysconfig.get_paths()["include"]), include]:
        cmd += ["-isystem", str(p)]
    proc = subprocess.run(cmd + [str(CUDA_DIR / "tile_binding.cu")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"tile_binding.cu does not parse:\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulation driver (csrc/cuda/emulation/emulate_tile.cpp) built once for the module."""
    if os.environ.get("FLASHNCE_CUDA_EMULATION", "1") == "0":
        pytest.skip("FLASHNCE_CUDA_EMULATION=0")
    cxx, include = _host_compiler_or_skip()
    exe = tmp_path_factory.mktemp("emulation") / "emulate"
    src = CUDA_DIR / "emulation" / "emulate_tile.cpp"
    start = time.monotonic()
    build = subprocess.run(
        [cxx, "-std=c++20", "-O1", "-pthread", f"-I{ROOT / 'csrc'}", f"-I{CUDA_DIR}",
         f"-I{include}", str(src), "-o", str(exe)],
        capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, f"emulation build failed:\n{build.stderr[-6000:]}"
    print(f"emulation build: {time.monotonic() - start:.0f} s")
    return exe


def _run_emulation(exe, stat):
    start = time.monotonic()
    proc = subprocess.run([str(exe), stat], capture_output=True, text=True, timeout=1200)
    print(f"emulation run ({stat}): {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, (
        f"emulated kernels disagree with float64 (exit {proc.returncode}):\n"
        f"{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}")
    assert f"{stat}: 0 failure(s)" in proc.stdout and "OK: 0 failure(s)" in proc.stdout


def test_kernels_under_cpu_emulation(emulator):
    """The CUDA core executed on the CPU (csrc/cuda/emulation: a fiber per CUDA thread, real
    barrier phases) through tile_forward / tile_backward for lse (and tile_forward_grad's
    refusal of it), against a float64 evaluation of the contract. Checks the walk's index
    math, roles, reductions and the launchers where no GPU exists; it is not a substitute for
    the GPU matrix below."""
    _run_emulation(emulator, "lse")


def test_pair_sum_under_cpu_emulation(emulator):
    """As above for pair_sum: tile_forward (sums of softplus(-z l), exactly 0 for empty rows /
    columns), tile_backward (G = (g_row + g_col) f') and tile_forward_grad (its stats bitwise
    tile_forward's, its gradients those of g_row = 1, g_col = 0), every relation with both
    flags, diagonal offsets and M0 < M, every kind, fp64 / fp32 / bf16 / fp16, N != M, N = 1,
    N = 0, M = 0, odd sizes, large logits."""
    _run_emulation(emulator, "pair_sum")


def test_masked_sum_under_cpu_emulation(emulator):
    """As above for masked_sum (SupCon: row_stat [N, 2] = (lse, sum of the positives' logits)):
    tile_forward (lse exactly as the lse stat's checks, the masked sum exactly 0 for rows /
    columns without a positive, (-inf, 0) for fully skipped ones), tile_backward (G = the lse
    terms + (g_row[i, 1] + g_col[j, 1]) on positives; zero upstream gradients give exactly
    nothing) and the refusal of tile_forward_grad, over the same relations, flags, offsets,
    row-only columns, kinds, dtypes and shapes as pair_sum."""
    _run_emulation(emulator, "masked_sum")


# The emulation driver's `op` mode (emulate_tile.cpp run_op_file): one problem in a file, the
# results of tile_forward, tile_backward (fed the forward's stats) and tile_forward_grad out.
_OP_MAGIC = 0x464E4345
_CORE_DTYPE = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_CUDA_ERROR_NOT_SUPPORTED = 801  # cudaErrorNotSupported


def _raw(t):
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _emulated_op(exe, workdir, x, y, alpha, beta, theta, tspec, g_row, g_col):
    """(status [3], (row, col), (dx, dy, d_alpha, d_beta, d_theta)) of the emulated core."""
    n, m, k = x.shape[0], y.shape[0], x.shape[1]
    opts = tspec.options(m)
    rel = list(tspec.relation.tensors)
    header = np.array([_OP_MAGIC, _CORE_DTYPE[x.dtype], *opts[:spec.NUM_OPTIONS], n, m, k,
                       len(rel)] + [t.numel() for t in rel], dtype=np.int64)
    src, dst = workdir / "op.in", workdir / "op.out"
    src.write_bytes(b"".join([header.tobytes(), np.float64(tspec.kappa).tobytes()] +
                             [_raw(t) for t in (x, y, alpha, beta, theta, *rel, g_row, g_col)]))
    proc = subprocess.run([str(exe), "op", str(src), str(dst)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"emulate op failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    buf, at = dst.read_bytes(), 0

    def take(shape, dtype):
        nonlocal at
        count = int(np.prod(shape))
        raw = dtype in (torch.bfloat16, torch.float16)
        npd = np.int16 if raw else {torch.float32: np.float32, torch.float64: np.float64,
                                    torch.int64: np.int64}[dtype]
        a = np.frombuffer(buf, dtype=npd, count=count, offset=at).copy()
        at += a.nbytes
        t = torch.from_numpy(a)
        return (t.view(dtype) if raw else t).reshape(shape)

    w = spec.STAT_INFO[tspec.stat]["state_width"]
    m0, r = tspec.cols_both(m), spec.NUM_ROW_SCALARS[tspec.kind]
    cd = alpha.dtype
    status = take((3,), torch.int64).tolist()
    row = take(spec.state_shape(tspec.stat, n), cd)
    col = take(spec.state_shape(tspec.stat, m0), cd)
    grads = (take((n, k), x.dtype), take((m, k), x.dtype), take((n, r), cd), take((m, r), cd),
             take((spec.NUM_THETA,), cd))
    assert w == 1 or row.shape == (n, w)
    return status, (row, col), grads


def _masked_sum_relation(name, n, m, g):
    """relation_case's cases, plus relations whose positives are kept (masked sums != 0)."""
    if name == "diagonal+2":
        return Relation.diagonal(diag_offset=2)
    if name == "diagonal_self-1":  # positives j = i, self pairs j = i - 1 skipped
        return Relation.diagonal(diag_offset=-1, skip_self=True)
    if name == "targets":
        return Relation.targets(torch.randint(0, m, (n,), generator=g))
    if name == "targets_self":  # positives t_i, self pairs j = i + 1 skipped (one set if equal)
        return Relation.targets(torch.randint(0, m, (n,), generator=g), skip_self=True,
                                diag_offset=1)
    if name == "labels":
        return Relation.labels(torch.randint(0, 3, (n,), generator=g),
                               torch.randint(0, 3, (m,), generator=g))
    if name == "labels_row_only":  # positives among the row-only columns too
        return Relation.labels(torch.randint(0, 3, (n,), generator=g),
                               torch.randint(0, 3, (m,), generator=g), cols_both=m - 9)
    if name == "labels_self_row_only":
        lab = torch.randint(0, 2, (max(n, m),), generator=g)
        return Relation.labels(lab[:n], lab[:m], skip_self=True, cols_both=m // 2)
    return relation_case(name, n, m, g)


# (relation, (N, M, K)): N != M, odd sizes, several row / column blocks (fp64 tiles are 32),
# N = 1; "csr" / "csr_self" have a fully skipped row (row 0) and column (column 1);
# "labels_rows" is SupCon's shape (label positives, self skipped, no column stats).
_MASKED_SUM_CASES = (
    ("none", (37, 29, 5)), ("self+3", (40, 71, 6)), ("self-2", (45, 33, 3)),
    ("diagonal+2", (35, 70, 6)), ("diagonal_self-1", (66, 41, 4)),
    ("diagonal_skip", (33, 40, 3)), ("targets", (45, 66, 5)), ("targets_self", (41, 37, 7)),
    ("targets_skip", (45, 66, 5)), ("labels", (50, 37, 5)), ("labels_self", (37, 50, 4)),
    ("labels_skip", (39, 45, 6)), ("labels_row_only", (41, 70, 5)),
    ("labels_self_row_only", (70, 44, 3)), ("csr", (70, 39, 6)), ("csr_self", (34, 34, 4)),
    ("row_only_self", (39, 70, 5)), ("labels_rows", (45, 45, 5)), ("targets", (1, 67, 5)),
    ("labels", (1, 1, 3)),
)


def _masked_sum_problem(kind, case, dtype, shape, seed):
    n, m, _ = shape
    x, y, alpha, beta, theta, tspec, *_ = make_problem(kind, "none", dtype, shape, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    rel = _masked_sum_relation(case, n, m, g)
    tspec = TileSpec(kind, "masked_sum", rel, tspec.kappa)
    cd = alpha.dtype
    g_row = torch.randn(n, 2, generator=g, dtype=torch.float64).to(cd)
    g_col = torch.randn(rel.m0(m), 2, generator=g, dtype=torch.float64).to(cd)
    if n > 4:  # zero upstream gradients: both values of row 3, the lse's of row 4
        g_row[3] = 0
        g_row[4, 0] = 0
    return x, y, alpha, beta, theta, tspec, g_row, g_col


@pytest.mark.parametrize("kind", spec.KINDS)
def test_masked_sum_against_dense_oracle(emulator, tmp_path, kind):
    """The emulated core's masked_sum against dense_tile_stat(..., stat="masked_sum") in
    float64: values (the -inf of fully skipped rows / columns, exact zeros of rows without a
    positive) and the gradients of sum(row * g_row) + sum(col * g_col) (g_row [N, 2],
    g_col [M0, 2], -inf entries left out as backends/dense.py backward_raw does), with exact
    zeros for fully skipped rows / columns; value 0 bitwise the lse stat's; tile_fwd_grad
    refused. Every relation with skip_self / skip_positives, diagonal offsets, row-only
    columns, N = 1, odd sizes, N != M; fp64 for every kind, fp32 and bf16 for two kinds."""
    dtypes = [torch.float64] + ([torch.float32, torch.bfloat16]
                                if kind in ("dot", "hyperbolic") else [])
    for dtype in dtypes:
        for seed, (case, shape) in enumerate(_MASKED_SUM_CASES):
            if dtype != torch.float64 and seed % 3:
                continue  # the roles do not depend on the dtype: a third of the cases
            problem = _masked_sum_problem(kind, case, dtype, shape, seed)
            x, y, alpha, beta, theta, tspec, g_row, g_col = problem
            where = f"{kind} {case} {tuple(shape)} {str(dtype)[6:]}"
            status, (row, col), grads = _emulated_op(emulator, tmp_path, *problem)
            assert status[:2] == [0, 0], f"{where}: status {status}"
            assert status[2] == _CUDA_ERROR_NOT_SUPPORTED, f"{where}: tile_fwd_grad {status}"
            want_row, want_col, want_grads = oracle(*problem)
            t_stat, t_grad = TOL[dtype]
            try:
                check_stat("row_stat", row, want_row, t_stat)
                check_stat("col_stat", col, want_col, t_stat)
                for name, got, want in zip(("dx", "dy", "d_alpha", "d_beta", "d_theta"), grads,
                                           want_grads):
                    check_grad(name, got, want, t_grad)
                # Exact zeros: the masked sum of a row / column without a positive, and the
                # gradients of fully skipped rows / columns.
                n, m = x.shape[0], y.shape[0]
                roles = dense_roles(tspec.relation.resolved(m), n, m, "cpu")
                m0 = tspec.cols_both(m)
                assert torch.all(row[~(roles == spec.ROLE_POSITIVE).any(1), 1] == 0)
                assert torch.all(col[~(roles[:, :m0] == spec.ROLE_POSITIVE).any(0), 1] == 0)
                dead_rows = (roles == spec.ROLE_SKIP).all(1)
                dead_cols = (roles == spec.ROLE_SKIP).all(0)
                assert torch.all(grads[0][dead_rows] == 0) and torch.all(grads[2][dead_rows] == 0)
                assert torch.all(grads[1][dead_cols] == 0) and torch.all(grads[3][dead_cols] == 0)
                # Value 0 is the lse stat itself: same folds, same merges, bitwise.
                lse_spec = TileSpec(kind, "lse", tspec.relation, tspec.kappa)
                _, (lse_row, lse_col), _ = _emulated_op(
                    emulator, tmp_path, x, y, alpha, beta, theta, lse_spec, g_row[:, 0],
                    g_col[:, 0])
                assert torch.equal(row[:, 0], lse_row) and torch.equal(col[:, 0], lse_col)
            except AssertionError as err:
                raise AssertionError(f"{where}: {err}") from err


# --------------------------------------------------------------------------------------------
# Availability: refusals are explained (runs everywhere)
# --------------------------------------------------------------------------------------------


def test_refuses_cpu_tensors_with_reason():
    x = torch.randn(5, 3)
    reasons = dispatch.BACKENDS["cuda"].not_supported_reasons(x, x, tile_spec())
    assert any("CUDA" in r for r in reasons), reasons


def test_reports_missing_cuda_kernels():
    why = _extension.why_cuda_unavailable()
    if torch.version.cuda is None:
        assert why is not None and "CPU build" in why
    if why is None:  # then the CUDA kernels must really be registered
        for op in ("flashnce::tile_fwd", "flashnce::tile_bwd", "flashnce::tile_fwd_grad"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


# --------------------------------------------------------------------------------------------
# 2. The ops on the GPU
# --------------------------------------------------------------------------------------------


def _require_ops(ops=("flashnce::tile_fwd", "flashnce::tile_bwd")):
    """Skip unless the ops run on DEVICE tensors (the CPU kernel when DRY_RUN)."""
    _extension.load()
    key = "CPU" if DRY_RUN else "CUDA"
    if not DRY_RUN:
        why = _extension.why_cuda_unavailable()
        if why is None and not torch.cuda.is_available():
            why = "no CUDA device"
        if why is not None:
            pytest.skip(f"backend 'cuda' unavailable: {why}")
    for op in ops:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
            pytest.skip(f"no {key} kernel registered for {op}")


def _fwd(x, y, alpha, beta, theta, tspec):
    rel = tspec.relation
    return torch.ops.flashnce.tile_fwd(x, y, alpha, beta, theta, list(rel.tensors),
                                       tspec.options(y.shape[0]), tspec.kappa)


def _bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col):
    rel = tspec.relation
    return torch.ops.flashnce.tile_bwd(x, y, alpha, beta, theta, list(rel.tensors),
                                       tspec.options(y.shape[0]), tspec.kappa, row, col, g_row,
                                       g_col)


def _fwd_grad(x, y, alpha, beta, theta, tspec):
    rel = tspec.relation
    return torch.ops.flashnce.tile_fwd_grad(x, y, alpha, beta, theta, list(rel.tensors),
                                            tspec.options(y.shape[0]), tspec.kappa)


ALL_OPS = ("flashnce::tile_fwd", "flashnce::tile_bwd", "flashnce::tile_fwd_grad")
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
KINDS = spec.KINDS


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stat", dispatch.BACKENDS["cuda"].stats)  # count: cpu / torch only
def test_ops_multi_tile(kind, stat):
    """Several row and column blocks in both directions, K over several chunks."""
    _require_ops()
    for case in ("none", "self+3", "labels_skip", "labels_self", "csr", "row_only_self"):
        problem = make_problem(kind, case, torch.float64, (517, 450, 70), device=DEVICE, seed=11,
                               stat=stat)
        check_against_oracle(_fwd, _bwd, problem)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16), ids=lambda d: str(d)[6:])
def test_fwd_grad_multi_tile(kind, dtype):
    """tile_fwd_grad (pair_sum): the stats and the g_row = 1, g_col = 0 gradients, several
    blocks in both directions, row-only columns."""
    _require_ops(ALL_OPS)
    for case in ("none", "self+3", "labels_self", "csr", "row_only_self"):
        problem = make_problem(kind, case, dtype, (517, 450, 70), device=DEVICE, seed=13,
                               stat="pair_sum")
        check_forward_grad(_fwd_grad, problem)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_deterministic(dtype):
    """Two runs give bitwise identical statistics and gradients (no atomics)."""
    _require_ops()
    prob = make_problem("hyperbolic", "csr_self", dtype, (300, 257, 96), device=DEVICE, seed=5)
    x, y, alpha, beta, theta, tspec, g_row, g_col = prob
    runs = []
    for _ in range(2):
        row, col = _fwd(x, y, alpha, beta, theta, tspec)
        runs.append((row, col, *_bwd(x, y, alpha, beta, theta, tspec, row, col, g_row, g_col)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    if torch._C._dispatch_has_kernel_for_dispatch_key("flashnce::tile_fwd_grad",
                                                      "CPU" if DRY_RUN else "CUDA"):
        prob = make_problem("hyperbolic", "csr_self", dtype, (300, 257, 96), device=DEVICE,
                            seed=5, stat="pair_sum")
        x, y, alpha, beta, theta, tspec, *_ = prob
        for a, b in zip(_fwd_grad(x, y, alpha, beta, theta, tspec),
                        _fwd_grad(x, y, alpha, beta, theta, tspec)):
            assert torch.equal(a, b)


def test_argument_errors():
    """Invalid options and relation tensors are refused with a flashnce: message."""
    _require_ops()
    x, y, alpha, beta, theta, tspec, *_ = make_problem("dot", "labels_skip", torch.float32,
                                                       (7, 9, 4), device=DEVICE)
    rel = list(tspec.relation.tensors)
    opts = tspec.options(9)

    def fails(match, tensors=rel, options=opts):
        with pytest.raises(RuntimeError, match=match):
            torch.ops.flashnce.tile_fwd(x, y, alpha, beta, theta, tensors, options, 1e-6)

    fails("options must have", options=opts[:-1])
    for slot, bad, match in ((spec.OPT_KIND, len(spec.KINDS), "unknown epilogue kind"),
                             (spec.OPT_STAT, len(spec.STATS), "unknown statistic"),
                             (spec.OPT_RELATION, len(spec.RELATIONS), "unknown relation"),
                             (spec.OPT_FLAGS, 4, "flags"),
                             (spec.OPT_COLS_BOTH, 10, "cols_both")):
        fails(match, options=opts[:slot] + [bad] + opts[slot + 1:])
    fails("takes 2 index tensors", tensors=rel[:1])
    fails("int64", tensors=[rel[0].int(), rel[1]])
    fails("must have 9 elements", tensors=[rel[0], rel[1][:5]])


@pytest.mark.parametrize("stat", ("lse", "masked_sum"))
def test_fwd_grad_refuses_lse(stat):
    """tile_fwd_grad exists for stats whose G is local to the pair; lse and masked_sum are
    refused clearly."""
    _require_ops(ALL_OPS)
    x, y, alpha, beta, theta, tspec, *_ = make_problem("dot", "labels_skip", torch.float32,
                                                       (7, 9, 4), device=DEVICE, stat=stat)
    with pytest.raises(RuntimeError, match=f"statistic {stat} has no one-pass gradient"):
        _fwd_grad(x, y, alpha, beta, theta, tspec)


def test_opcheck():
    """Schema, fake tensor and autograd registration of the ops on DEVICE tensors."""
    _require_ops()
    x, y, alpha, beta, theta, tspec, g_row, g_col = make_problem(
        "euclidean", "targets_skip", torch.float32, (37, 29, 20), device=DEVICE)
    args = (x, y, alpha, beta, theta, list(tspec.relation.tensors), tspec.options(29),
            tspec.kappa)
    torch.library.opcheck(torch.ops.flashnce.tile_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    row, col = torch.ops.flashnce.tile_fwd(*args)
    torch.library.opcheck(torch.ops.flashnce.tile_bwd.default, args + (row, col, g_row, g_col),
                          test_utils=("test_schema", "test_faketensor"))
    if torch._C._dispatch_has_kernel_for_dispatch_key("flashnce::tile_fwd_grad",
                                                      "CPU" if DRY_RUN else "CUDA"):
        x, y, alpha, beta, theta, tspec, *_ = make_problem(
            "euclidean", "targets_skip", torch.float32, (37, 29, 20), device=DEVICE,
            stat="pair_sum")
        torch.library.opcheck(torch.ops.flashnce.tile_fwd_grad.default,
                              (x, y, alpha, beta, theta, list(tspec.relation.tensors),
                               tspec.options(29), tspec.kappa),
                              test_utils=("test_schema", "test_faketensor"))
