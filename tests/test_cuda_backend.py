"""CUDA backend (csrc/cuda): compile checks, the kernels under CPU emulation, and the op matrix
on a GPU.

1. ``test_nvcc_compile_check`` compiles the torch-free CUDA core for sm_80 and sm_90 with
   csrc/cuda/check_compile.sh (CMake + Ninja, or plain nvcc) into a temporary directory. It runs
   whenever nvcc is on PATH, whatever torch is installed; FLASHNCE_NVCC_CHECK=0 skips it (e.g.
   when CI already ran the script as its own step).
   ``test_binding_parses`` parses the torch binding (csrc/cuda/tile_binding.cu) with the host
   compiler against the installed torch headers: the binding cannot be built with a CPU torch,
   but its use of the ATen / c10 API is checked.
   ``test_kernels_under_cpu_emulation`` (lse) and ``test_pair_sum_under_cpu_emulation``
   (pair_sum, with tile_forward_grad) run the kernels themselves, through the core's public
   entry points, on the CPU (csrc/cuda/emulation, built once per session; g++ and the CUDA
   headers needed; FLASHNCE_CUDA_EMULATION=0 skips) against a float64 evaluation of the
   contract: every relation, both flags, row-only columns, fully skipped rows / columns, bias
   and d_theta, every kind and dtype, shapes that are not tile multiples.
2. On a GPU: the generated matrix (test_tile_ops.py) runs the cuda backend over every kind x
   relation case x dtype against the float64 dense oracle. Here, the ops called directly on
   CUDA tensors: several row / column blocks and K chunks (both stats, and tile_fwd_grad for
   pair_sum), determinism, argument errors and opcheck. Skipped, with the reason, without a
   CUDA device or CUDA kernels.
   FLASHNCE_CUDA_TESTS_ON=cpu runs that part on CPU tensors instead (the ops then dispatch to
   the CPU kernel): a self-check of this file's logic and tolerances on machines without a GPU.
"""

import os
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import torch

from flashnce import _extension, dispatch
from flashnce.core import spec

from _helpers import tile_spec
from _tile_cases import check_against_oracle, check_forward_grad, make_problem

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
CHECK_SCRIPT = CUDA_DIR / "check_compile.sh"
DRY_RUN = os.environ.get("FLASHNCE_CUDA_TESTS_ON", "") == "cpu"
DEVICE = "cpu" if DRY_RUN else "cuda"


# --------------------------------------------------------------------------------------------
# 1. Compile checks and CPU emulation (no GPU, no CUDA torch needed)
# --------------------------------------------------------------------------------------------


def test_nvcc_compile_check(tmp_path):
    if os.environ.get("FLASHNCE_NVCC_CHECK", "1") == "0":
        pytest.skip("FLASHNCE_NVCC_CHECK=0")
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        reason = "nvcc is not on PATH: the CUDA compile check needs a CUDA toolkit"
        print(reason)
        pytest.skip(reason)
    if shutil.which("bash") is None:
        pytest.skip("bash is not available to run csrc/cuda/check_compile.sh")
    start = time.monotonic()
    proc = subprocess.run(["bash", str(CHECK_SCRIPT), str(tmp_path / "build")],
                          capture_output=True, text=True, timeout=1200)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, (
        f"CUDA core failed to compile (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n"
        f"{proc.stderr[-6000:]}")
    print(f"nvcc compile check: {elapsed:.0f} s")
    assert "compiled for sm_80, sm_90" in proc.stdout


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
@pytest.mark.parametrize("stat", spec.STATS)
def test_ops_multi_tile(kind, stat):
    """Several row and column blocks in both directions, K over several chunks."""
    _require_ops()
    for case in ("none", "self+3", "labels_skip", "csr", "row_only_self"):
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


def test_fwd_grad_refuses_lse():
    """tile_fwd_grad exists for stats whose G is local to the pair; lse is refused clearly."""
    _require_ops(ALL_OPS)
    x, y, alpha, beta, theta, tspec, *_ = make_problem("dot", "labels_skip", torch.float32,
                                                       (7, 9, 4), device=DEVICE, stat="lse")
    with pytest.raises(RuntimeError, match="statistic lse has no one-pass gradient"):
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
