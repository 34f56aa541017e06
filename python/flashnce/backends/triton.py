"""``triton`` backend: the fused Triton kernels of ``flashnce.triton_kernels``.

Accepts CUDA tensors when Triton is importable, and CPU tensors only when ``TRITON_INTERPRET=1``
is set (read on every call) and the kernels were loaded under the interpreter: that is how the
test-suite runs them without a GPU. ``backend="auto"`` tries this backend first, so on CUDA it is
preferred. Every refusal says why. Forward and backward call the registered ops
``flashnce::triton_lse_fwd`` / ``flashnce::triton_lse_bwd`` (see ``triton_kernels/ops.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from .base import Backend, TileSpec

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_KINDS = ("dot", "sqeuclidean", "euclidean", "hyperbolic", "cosine")
_OPS_MODULE = "flashnce.triton_kernels.ops"


def _import_problem() -> str | None:
    """None when triton imports, else the reason (cached by Python's module cache)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install flashnce[triton])"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install must refuse, not crash dispatch
        return f"triton could not be imported: {exc!r}"
    return None


def _ops():
    return importlib.import_module(_OPS_MODULE)


class TritonBackend(Backend):
    name = "triton"
    # flashnce.ops calls forward() directly: the op's registered autograd (triton_kernels/ops.py)
    # is the backward, so eager and torch.compile see the same triton_op pair.
    op_based = True

    def not_supported_reasons(self, x, y, spec: TileSpec) -> list[str]:
        problem = _import_problem()
        if problem:
            return [problem]
        reasons = []
        interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
        if x.device.type == "cpu":
            if not interpret:
                reasons.append("CPU tensors run only under the Triton interpreter "
                               "(set TRITON_INTERPRET=1; meant for tests, it is slow)")
            else:
                loaded = sys.modules.get(_OPS_MODULE)
                if loaded is not None and not loaded.INTERPRETED:
                    reasons.append("the Triton kernels were loaded without TRITON_INTERPRET=1, "
                                   "so they cannot run on CPU tensors in this process")
        elif x.device.type != "cuda":
            reasons.append(f"device {x.device.type!r} is not supported (CUDA, or CPU under "
                           "TRITON_INTERPRET=1)")
        if y.device != x.device:
            reasons.append(f"x is on {x.device} but y is on {y.device}")
        if x.dtype == torch.float64:
            reasons.append("float64 is not supported by the Triton kernels (fp32, bf16, fp16); "
                           "use backend='cpu' or 'torch'")
        elif x.dtype not in _DTYPES:
            reasons.append(f"dtype {x.dtype} is not supported (fp32, bf16, fp16)")
        if spec.kind not in _KINDS:
            reasons.append(f"epilogue kind {spec.kind!r} has no Triton kernel")
        return reasons

    def forward(self, x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec):
        _ops()
        return torch.ops.flashnce.triton_lse_fwd(
            x, y, alpha, beta, scale, inv_sqrt_c, spec.kind, spec.exclude_diagonal, spec.kappa)

    def backward(self, x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec,
                 row_lse, col_lse, g_row, g_col):
        _ops()
        return torch.ops.flashnce.triton_lse_bwd(
            x, y, alpha, beta, scale, inv_sqrt_c, spec.kind, spec.exclude_diagonal, spec.kappa,
            row_lse, col_lse, g_row.float(), g_col.float())


BACKEND = TritonBackend()
