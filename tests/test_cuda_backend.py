"""CUDA backend (csrc/cuda): nvcc compile check, and the correctness matrix on a GPU.

1. ``test_nvcc_compile_check`` compiles the torch-free CUDA core for sm_80 and sm_90 with
   csrc/cuda/check_compile.sh (CMake + Ninja, or plain nvcc) into a temporary directory. It runs
   whenever nvcc is on PATH, whatever torch is installed; FLASHNCE_NVCC_CHECK=0 skips it (e.g.
   when CI already ran the script as its own step).
   ``test_kernels_under_cpu_emulation`` also runs the kernels themselves on the CPU through
   csrc/cuda/emulation (g++ and the CUDA headers needed; FLASHNCE_CUDA_EMULATION=0 skips).
2. The matrix (every geometry x {float32, float64, bfloat16, float16} x shapes that are not
   multiples of the tile sizes, symmetric and one-way, the diagonal mask, learnable scale and
   curvature) compares backend=BACKEND with the float64 reference, loss and every gradient.
   float32/float64 use the bounds of the CPU backends; bf16/fp16 are held to twice the error of
   the materialised reference run in that dtype plus one unit roundoff (STYLE.md practice 6).
   Skipped, with the backend's own reason, without a CUDA device or CUDA kernels.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

import flashnce
from flashnce import dispatch
from flashnce.backends.base import TileSpec

from _helpers import (FP32_GRAD_RTOL, FP32_LOSS_RTOL, GEOMETRY_NAMES, assert_close,
                      assert_matches_oracle, make_features, oracle, rel_maxnorm_error)

ROOT = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = ROOT / "csrc" / "cuda" / "check_compile.sh"
HALF = (torch.bfloat16, torch.float16)
# Slack on top of 2x the materialised reference's error: two roundings of bf16; for fp16 the
# same absolute slack, since distances built from a GEMM carry an fp32-accumulation floor
# (GEOMETRY.md P3) that the materialised fp16 reference does not share (measured 3.1e-3 on the
# cpu backend for euclidean, N = 300, d = 3).
UNIT = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-7}
TOL = {torch.float32: (FP32_LOSS_RTOL, FP32_GRAD_RTOL), torch.float64: (1e-10, 1e-9)}
SPEC = TileSpec("dot", False, 1e-6)
# FLASHNCE_CUDA_TESTS_ON=cpu runs the GPU matrix against the cpu backend on CPU tensors: a
# self-check of this file's logic and tolerances on machines without a GPU.
DRY_RUN = os.environ.get("FLASHNCE_CUDA_TESTS_ON", "") == "cpu"
DEVICE, BACKEND = ("cpu", "cpu") if DRY_RUN else ("cuda", "cuda")


# --------------------------------------------------------------------------------------------
# 1. nvcc compile check (no GPU, no CUDA torch needed)
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


def test_kernels_under_cpu_emulation(tmp_path):
    """The CUDA tile kernels executed on the CPU (csrc/cuda/emulation: a thread per CUDA
    thread, real barriers) against a float64 evaluation of the contract: every dtype and kind,
    ragged shapes, the diagonal mask. Checks the walk's index math, masks and reductions
    where no GPU exists; it is not a substitute for the GPU matrix below."""
    if os.environ.get("FLASHNCE_CUDA_EMULATION", "1") == "0":
        pytest.skip("FLASHNCE_CUDA_EMULATION=0")
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    include = _cuda_include_dir()
    if cxx is None or include is None:
        pytest.skip("needs a C++20 compiler (CXX or g++) and the CUDA toolkit headers "
                    "(CUDA_HOME or /usr/local/cuda)")
    exe = tmp_path / "emulate"
    src = ROOT / "csrc" / "cuda" / "emulation" / "emulate_pairwise_lse.cpp"
    build = subprocess.run(
        [cxx, "-std=c++20", "-O1", "-pthread", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'cuda'}",
         f"-I{include}", str(src), "-o", str(exe)],
        capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"emulation build failed:\n{build.stderr[-6000:]}"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"emulated kernels disagree with float64:\n{proc.stdout[-6000:]}"


# --------------------------------------------------------------------------------------------
# Dispatch: refusals are explained (runs everywhere)
# --------------------------------------------------------------------------------------------


def test_refuses_cpu_tensors_with_reason():
    x = torch.randn(5, 3)
    reasons = dispatch.get_backend("cuda").not_supported_reasons(x, x, SPEC)
    assert any("not on a CUDA device" in r for r in reasons)
    with pytest.raises(ValueError, match="not on a CUDA device"):
        flashnce.infonce(x, x, backend="cuda")


def test_reports_missing_cuda_kernels():
    from flashnce.backends import cuda as cuda_backend

    why = cuda_backend.why_unavailable()
    if torch.version.cuda is None:
        assert why is not None and "CPU build" in why
    if why is None:  # then the CUDA kernel must really be registered
        assert torch._C._dispatch_has_kernel_for_dispatch_key(
            "flashnce::pairwise_lse_fwd", "CUDA")


# --------------------------------------------------------------------------------------------
# 2. Correctness matrix on the GPU
# --------------------------------------------------------------------------------------------


def _require_cuda_backend():
    if DRY_RUN:
        return
    if not torch.cuda.is_available():
        reason = ("no CUDA device"
                  + (f" (torch {torch.__version__} is a CPU build)" if torch.version.cuda is None
                     else ""))
        pytest.skip(f"backend 'cuda' unavailable: {reason}")
    x = torch.zeros(2, 2, device="cuda")
    reasons = dispatch.get_backend("cuda").not_supported_reasons(x, x, SPEC)
    if reasons:
        pytest.skip(f"backend 'cuda' unavailable: {'; '.join(reasons)}")


def _grads_of(fn, x, y, scale, curv, **kwargs):
    """Loss and grads (x, y, scale, curvature) of fn on fresh leaves; None grads -> zeros."""
    leaves = [x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_(),
              scale.detach().clone().requires_grad_(), curv.detach().clone().requires_grad_()]
    loss = fn(*leaves[:2], scale=leaves[2], curvature=leaves[3], **kwargs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss, list(grads)


def check_infonce(geometry, x, y, **kwargs):
    """infonce with backend='cuda' on CUDA tensors vs the float64 oracle."""
    dtype = x.dtype
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    x, y = x.to(DEVICE), y.to(DEVICE)
    scale = torch.tensor(2.5, dtype=cd, device=DEVICE)
    curv = torch.tensor(0.8, dtype=cd, device=DEVICE)
    loss, grads = _grads_of(flashnce.infonce, x, y, scale, curv, geometry=geometry,
                            backend=BACKEND, **kwargs)
    assert loss.dtype == cd and loss.device.type == DEVICE
    ref_loss, ref_grads, floors = oracle(x, y, params=(scale, curv), geometry=geometry, **kwargs)
    if dtype in HALF:
        low = [scale.to(dtype), curv.to(dtype)]
        lo_loss, lo_grads = _grads_of(flashnce.reference_infonce, x, y, *low, geometry=geometry,
                                      **kwargs)
        tols = [2 * rel_maxnorm_error(lo.double() if lo is not None else torch.zeros_like(r),
                                      r, f) + UNIT[dtype]
                for lo, r, f in zip([lo_loss] + lo_grads, [ref_loss] + list(ref_grads), floors)]
    else:
        tols = [TOL[dtype][0]] + [TOL[dtype][1]] * 4
    assert_matches_oracle(geometry, loss, grads, ref_loss, ref_grads, floors, tols,
                          grad_dtype=dtype, device_type=DEVICE)


DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n", [1, 7, 64, 300])
@pytest.mark.parametrize("d", [1, 3, 64, 129])
def test_symmetric_matches_reference(dtype, geometry, n, d):
    _require_cuda_backend()
    x = make_features(n, d, dtype=dtype, seed=n * 100 + d, geometry=geometry)
    y = make_features(n, d, dtype=dtype, seed=n * 100 + d + 1, geometry=geometry, role="y")
    check_infonce(geometry, x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,m,d", [(1, 5, 3), (7, 13, 3), (64, 30, 64), (300, 257, 64),
                                   (33, 200, 48)])
def test_one_way_matches_reference(dtype, geometry, n, m, d):
    _require_cuda_backend()
    x = make_features(n, d, dtype=dtype, seed=n + m, geometry=geometry)
    y = make_features(m, d, dtype=dtype, seed=n + m + 7, geometry=geometry, role="y")
    targets = torch.randint(0, m, (n,), generator=torch.Generator().manual_seed(n)).to(DEVICE)
    check_infonce(geometry, x, y, symmetric=False, targets=targets)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,m", [(2, 2), (9, 5), (5, 9), (70, 70), (65, 130)])
def test_pairwise_lse_exclude_diagonal(dtype, geometry, n, m):
    """Same-set mask: row / column LSE (an empty row is -inf) and their gradients."""
    _require_cuda_backend()
    x = make_features(n, 4, dtype=dtype, seed=n, geometry=geometry).to(DEVICE)
    y = make_features(m, 4, dtype=dtype, seed=m + 50, geometry=geometry).to(DEVICE)
    kw = dict(geometry=geometry, scale=1.7, curvature=1.3, exclude_diagonal=True)
    w_row = torch.linspace(0.5, 1.5, n, dtype=torch.float64, device=DEVICE)
    w_col = torch.linspace(-1.0, 1.0, m, dtype=torch.float64, device=DEVICE)

    def run(xx, yy, fn, **extra):
        xr, yr = xx.clone().requires_grad_(), yy.clone().requires_grad_()
        row, col = fn(xr, yr, **kw, **extra)
        fin_r, fin_c = torch.isfinite(row), torch.isfinite(col)
        out = (row.double() * w_row)[fin_r].sum() + (col.double() * w_col)[fin_c].sum()
        grads = torch.autograd.grad(out, [xr, yr], allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip((xr, yr), grads)]
        return (row, col, *grads)

    ours = run(x, y, flashnce.pairwise_lse, backend=BACKEND)
    ref = run(x.double(), y.double(), flashnce.reference_pairwise_lse)
    value_tol, grad_tol = (1e-12, 1e-9) if dtype == torch.float64 else (FP32_LOSS_RTOL,
                                                                        FP32_GRAD_RTOL)
    for name, a, r, tol in zip(("row_lse", "col_lse", "dx", "dy"), ours, ref,
                               (value_tol, value_tol, grad_tol, grad_tol)):
        fin = torch.isfinite(r)
        assert torch.equal(torch.isfinite(a), fin), f"{geometry} {name}: -inf pattern differs"
        assert_close(a.double()[fin], r[fin], tol, f"{geometry} {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic(dtype):
    """Two runs give bitwise identical LSEs and gradients (no atomics)."""
    _require_cuda_backend()
    x = make_features(300, 96, dtype=dtype, seed=5, geometry="lorentz").to(DEVICE)
    y = make_features(257, 96, dtype=dtype, seed=6, geometry="lorentz").to(DEVICE)
    runs = []
    for _ in range(2):
        xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
        s = torch.tensor(3.0, device=DEVICE, requires_grad=True)
        row, col = flashnce.pairwise_lse(xr, yr, geometry="lorentz", scale=s, backend=BACKEND)
        out = row.sum() + 0.3 * col.sum()
        runs.append((row, col, *torch.autograd.grad(out, [xr, yr, s])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_ops_direct_and_opcheck():
    """The registered ops on CUDA tensors: shapes, dtypes, and torch.library.opcheck."""
    _require_cuda_backend()
    x = make_features(37, 20, geometry="euclidean").to(DEVICE)
    y = make_features(29, 20, geometry="euclidean", seed=3).to(DEVICE)
    a, b = x.square().sum(-1, keepdim=True), y.square().sum(-1, keepdim=True)
    s, k = torch.tensor(1.3, device=DEVICE), torch.tensor(1.0, device=DEVICE)
    row, col = torch.ops.flashnce.pairwise_lse_fwd(x, y, a, b, s, k, 2, False, 1e-6)
    assert row.shape == (37,) and col.shape == (29,) and row.dtype == torch.float32
    torch.library.opcheck(torch.ops.flashnce.pairwise_lse_fwd.default,
                          (x.requires_grad_(), y, a, b, s, k, 2, False, 1e-6),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_matches_cpu_backend_large():
    """A multi-tile case (several row and column blocks, K not a multiple of the K chunk)
    against the cpu/torch backend in float64, every kind, with the diagonal mask."""
    _require_cuda_backend()
    for geometry in GEOMETRY_NAMES:
        x = make_features(517, 70, dtype=torch.float64, seed=11, geometry=geometry)
        y = make_features(450, 70, dtype=torch.float64, seed=12, geometry=geometry)
        kw = dict(geometry=geometry, scale=2.0, curvature=0.7, exclude_diagonal=True)
        ref = flashnce.pairwise_lse(x, y, backend="torch", **kw)
        got = flashnce.pairwise_lse(x.to(DEVICE), y.to(DEVICE), backend=BACKEND, **kw)
        for a, r, name in zip(got, ref, ("row_lse", "col_lse")):
            assert_close(a.cpu(), r, 1e-12, f"{geometry} {name}")
