"""Launchers for the LSE kernels: default configs per dtype, opt-in autotuning, grids.

``lse_forward(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa)``
    -> (row_lse [N], col_lse [M]) fp32: two launches of ``_lse_fwd_kernel`` (X vs Y, Y vs X).
``lse_backward(..., row_lse, col_lse, g_row, g_col)``
    -> (dX, dY, d_alpha, d_beta, gh): two launches of ``_lse_bwd_kernel``.

Configs: hand-picked defaults per operand dtype (``DEFAULT_CONFIGS``). Setting
``FLASHNCE_TRITON_AUTOTUNE=1`` (read on every call) switches to ``triton.autotune`` over
``AUTOTUNE_CONFIGS``, keyed on power-of-two buckets of N and M plus K, the kind and the flags
(Triton adds the tensor dtypes to the key), so a new batch size inside a known bucket reuses
the tuned config instead of retuning.

TF32: fp32 operands use IEEE fp32 dot products unless the caller allows TF32 through
``torch.backends.cuda.matmul.allow_tf32`` (read per call). 16-bit operands always use tensor
cores with fp32 accumulation.
"""

from __future__ import annotations

import os

import torch
import triton
from torch.library import wrap_triton

from .epilogue import KIND_IDS, NUM_ROW_SCALARS
from .lse_backward import _lse_bwd_kernel
from .lse_forward import _lse_fwd_kernel

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - every supported triton has it
    InterpretedFunction = ()

# Kernels decorated while TRITON_INTERPRET=1 run in the interpreter (CPU tensors, tests).
INTERPRETED = isinstance(_lse_fwd_kernel, InterpretedFunction)

AUTOTUNE_ENV = "FLASHNCE_TRITON_AUTOTUNE"

# Per operand dtype: forward (BLOCK_A, BLOCK_B, BLOCK_K, warps, stages) and backward
# (BLOCK_A, BLOCK_B, BLOCK_K, BLOCK_D, warps, stages). 16-bit operands halve the bytes per
# element, so they take larger K chunks; the backward holds a [BLOCK_A, BLOCK_D] fp32
# accumulator besides the logit tile, so it uses smaller row blocks.
DEFAULT_CONFIGS = {
    torch.float32: dict(fwd=(64, 64, 32, 4, 2), bwd=(64, 64, 32, 128, 8, 1)),
    torch.bfloat16: dict(fwd=(128, 64, 64, 8, 3), bwd=(64, 64, 64, 128, 8, 2)),
    torch.float16: dict(fwd=(128, 64, 64, 8, 3), bwd=(64, 64, 64, 128, 8, 2)),
}

_FWD_KEYS = ["KEY_NA", "KEY_NB", "K", "KIND", "EXCLUDE_DIAG", "INPUT_PRECISION"]
AUTOTUNE_FWD_CONFIGS = [
    triton.Config(dict(BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=bk), num_warps=w, num_stages=s)
    for ba, bb, bk, w, s in [
        (64, 64, 32, 4, 2), (64, 128, 32, 4, 3), (128, 64, 32, 8, 3),
        (128, 64, 64, 8, 3), (128, 128, 64, 8, 2), (64, 64, 64, 4, 3),
    ]
]
AUTOTUNE_BWD_CONFIGS = [
    triton.Config(dict(BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=bk, BLOCK_D=bd), num_warps=w,
                  num_stages=s)
    for ba, bb, bk, bd, w, s in [
        (64, 64, 32, 128, 8, 1), (64, 64, 64, 128, 8, 2), (32, 64, 64, 128, 4, 2),
        (64, 32, 64, 64, 4, 2), (128, 64, 64, 64, 8, 2),
    ]
]

_autotuned: dict[str, object] = {}


def _autotuned_kernel(which: str):
    """The autotune wrapper, built on first use (building it costs nothing at import)."""
    if which not in _autotuned:
        if which == "fwd":
            _autotuned[which] = triton.autotune(AUTOTUNE_FWD_CONFIGS, key=_FWD_KEYS)(
                _lse_fwd_kernel)
        else:
            # The gh partial buffer is sized from the default BLOCK_A; every candidate's row
            # blocks fit in it because it is sized for the smallest BLOCK_A (see below).
            _autotuned[which] = triton.autotune(
                AUTOTUNE_BWD_CONFIGS, key=_FWD_KEYS + ["WRITE_GH"],
                reset_to_zero=["GH"])(_lse_bwd_kernel)
    return _autotuned[which]


def autotune_enabled() -> bool:
    """FLASHNCE_TRITON_AUTOTUNE=1, read per call. Ignored under the interpreter: Triton's
    autotuner benchmarks on a GPU driver, which the interpreter does not have."""
    return os.environ.get(AUTOTUNE_ENV, "0") not in ("", "0") and not INTERPRETED


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _block_k(bk: int, k: int) -> int:
    # tl.dot needs every dim >= 16; small d (e.g. 3) pads one chunk with zeros.
    return max(16, min(bk, triton.next_power_of_2(k)))


def _common(kind: str, exclude_diagonal: bool, kappa: float, dtype: torch.dtype) -> dict:
    return dict(KIND=KIND_IDS[kind], NR=NUM_ROW_SCALARS[kind],
                EXCLUDE_DIAG=bool(exclude_diagonal), KAPPA=float(kappa),
                INPUT_PRECISION=_input_precision(dtype), UPCAST=INTERPRETED)


def _row_lse(a, b, sa, sb, scale, inv_sqrt_c, flags, config=None):
    na, k = a.shape
    nb = b.shape[0]
    out = torch.empty(na, dtype=torch.float32, device=a.device)
    if na == 0:
        return out
    args = (a, b, sa, sb, scale, inv_sqrt_c, out, na, nb, k, a.stride(0), b.stride(0),
            _bucket(na), _bucket(nb))
    if autotune_enabled():
        grid = lambda meta: (triton.cdiv(na, meta["BLOCK_A"]),)  # noqa: E731
        wrap_triton(_autotuned_kernel("fwd"))[grid](*args, **flags)
    else:
        ba, bb, bk, warps, stages = config or DEFAULT_CONFIGS[a.dtype]["fwd"]
        wrap_triton(_lse_fwd_kernel)[(triton.cdiv(na, ba),)](
            *args, **flags, BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=_block_k(bk, k),
            num_warps=warps, num_stages=stages)
    return out


def lse_forward(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa,
                config=None):
    """(row_lse [N], col_lse [M]) fp32; see lse_forward.py for why this is two launches.
    ``config`` (BLOCK_A, BLOCK_B, BLOCK_K, warps, stages) overrides the dtype default."""
    flags = _common(kind, exclude_diagonal, kappa, x.dtype)
    row = _row_lse(x, y, alpha, beta, scale, inv_sqrt_c, flags, config)
    col = _row_lse(y, x, beta, alpha, scale, inv_sqrt_c, flags, config)
    return row, col


_MIN_BWD_BLOCK_A = min(c.kwargs["BLOCK_A"] for c in AUTOTUNE_BWD_CONFIGS)


def _row_grads(a, b, sa, sb, scale, inv_sqrt_c, lse_a, lse_b, g_a, g_b, flags, write_gh,
               config=None):
    na, k = a.shape
    nb = b.shape[0]
    da = torch.empty_like(a)
    dsa = torch.empty_like(sa)
    if na == 0:
        return da, dsa, torch.zeros((), dtype=torch.float32, device=a.device)
    # One gh partial per row block; zero-filled so unused slots (autotune with a larger
    # BLOCK_A) add nothing to the deterministic final sum.
    gh = torch.zeros(triton.cdiv(na, _MIN_BWD_BLOCK_A), dtype=torch.float32, device=a.device)
    args = (a, b, sa, sb, scale, inv_sqrt_c, lse_a, lse_b, g_a, g_b, da, dsa, gh,
            na, nb, k, a.stride(0), b.stride(0), da.stride(0), _bucket(na), _bucket(nb))
    if autotune_enabled():
        grid = lambda meta: (triton.cdiv(na, meta["BLOCK_A"]),  # noqa: E731
                             triton.cdiv(k, meta["BLOCK_D"]))
        wrap_triton(_autotuned_kernel("bwd"))[grid](*args, **flags, WRITE_GH=write_gh)
    else:
        ba, bb, bk, bd, warps, stages = config or DEFAULT_CONFIGS[a.dtype]["bwd"]
        bd = max(16, min(bd, triton.next_power_of_2(k)))
        wrap_triton(_lse_bwd_kernel)[(triton.cdiv(na, ba), triton.cdiv(k, bd))](
            *args, **flags, WRITE_GH=write_gh, BLOCK_A=ba, BLOCK_B=bb,
            BLOCK_K=_block_k(bk, k), BLOCK_D=bd, num_warps=warps, num_stages=stages)
    return da, dsa, gh.sum()


def lse_backward(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa,
                 row_lse, col_lse, g_row, g_col, config=None):
    """(dX, dY, d_alpha, d_beta, gh): dX/d_alpha/gh over row blocks, dY/d_beta over column
    blocks (the swapped launch); deterministic, no atomics. ``config`` (BLOCK_A, BLOCK_B,
    BLOCK_K, BLOCK_D, warps, stages) overrides the dtype default."""
    flags = _common(kind, exclude_diagonal, kappa, x.dtype)
    # Two-part g_p tile for cosine on 16-bit operands (see lse_backward.py).
    flags["SPLIT_GP"] = kind == "cosine" and x.dtype in (torch.bfloat16, torch.float16)
    dx, d_alpha, gh = _row_grads(x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse,
                                 g_row, g_col, flags, True, config)
    dy, d_beta, _ = _row_grads(y, x, beta, alpha, scale, inv_sqrt_c, col_lse, row_lse,
                               g_col, g_row, flags, False, config)
    return dx, dy, d_alpha, d_beta, gh
