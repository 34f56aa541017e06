"""``cpu`` backend: the compiled C++ tile walk (csrc/cpu/pairwise_lse_cpu.cpp).

Fused forward (row and column log-sum-exp in one pass over the tiles) and fused backward (each
tile recomputed once, both gradient GEMMs on it), parallel over row blocks, deterministic for a
given thread count. Called through the torch.library ops ``flashnce::pairwise_lse_fwd`` /
``flashnce::pairwise_lse_bwd`` (see ``flashnce.ops``), so it works under torch.compile.
Unavailable, with the reason and how to build it, when the extension was not compiled.
"""

from __future__ import annotations

import torch

from .. import _extension
from ..geometry import EPILOGUE_KINDS
from .base import Backend, TileSpec

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class CpuKernel(Backend):
    name = "cpu"
    op_based = True  # flashnce.ops calls torch.ops.flashnce.* for this backend

    def not_supported_reasons(self, x, y, spec: TileSpec) -> list[str]:
        reasons = []
        why = _extension.why_unavailable()
        if why is not None:
            reasons.append(why)
        if x.device.type != "cpu" or y.device.type != "cpu":
            reasons.append(f"needs CPU tensors, got {x.device.type} and {y.device.type}")
        if x.dtype not in DTYPES:
            reasons.append(f"dtype {x.dtype} not supported (fp32, fp64, bf16, fp16)")
        if spec.kind not in EPILOGUE_KINDS:
            reasons.append(f"epilogue kind {spec.kind!r} not implemented")
        if max(x.shape[0], y.shape[0], x.shape[-1]) >= 2**31:
            reasons.append("dimensions must be below 2**31 (BLAS int32 sizes)")
        return reasons

    def forward(self, x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec):
        return torch.ops.flashnce.pairwise_lse_fwd(
            x, y, alpha, beta, scale, inv_sqrt_c, EPILOGUE_KINDS.index(spec.kind),
            spec.exclude_diagonal, spec.kappa)

    def backward(self, x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec,
                 row_lse, col_lse, g_row, g_col):
        return torch.ops.flashnce.pairwise_lse_bwd(
            x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse, g_row, g_col,
            EPILOGUE_KINDS.index(spec.kind), spec.exclude_diagonal, spec.kappa)


BACKEND = CpuKernel()
