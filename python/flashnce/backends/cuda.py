"""``cuda`` backend: the compiled CUDA tile walk (csrc/cuda/, module ``flashnce._C_cuda``).

Forward: row LSE and column LSE by two launches over row / column blocks (tiles recomputed, no
N x M or partial-LSE buffers). Backward: dX + d_alpha + per-block gh partials over row blocks,
dY + d_beta over column blocks; no atomics, so results are deterministic. bf16/fp16 tiles use
tensor cores (WMMA) with fp32 accumulation. Called through the same torch.library ops as the
``cpu`` backend (``flashnce::pairwise_lse_fwd`` / ``pairwise_lse_bwd``): the dispatcher picks
the CUDA kernel from the tensors' device, and ``flashnce.ops`` supplies autograd and fakes.

Refuses, with the reason, CPU tensors, a CPU-only build of torch, and an extension built
without the CUDA kernels.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from .. import _extension
from ..geometry import EPILOGUE_KINDS
from .base import TileSpec
from .cpu import DTYPES, CpuKernel

MODULE = "flashnce._C_cuda"
_state: dict = {}


def _load() -> str | None:
    """Import flashnce._C (schemas) and flashnce._C_cuda (kernels); None or why it failed."""
    if torch.version.cuda is None:
        return (f"flashnce._C was built without CUDA kernels: torch {torch.__version__} is a "
                "CPU build")
    try:
        importlib.import_module("flashnce._C")
    except ImportError as exc:
        return f"extension not built: flashnce._C is not available ({exc}); {_extension.BUILD_HINT}"
    if importlib.util.find_spec(MODULE) is None:
        return ("flashnce._C was built without CUDA kernels (no CUDA toolkit found at build "
                "time, or FLASHNCE_CUDA=0); rebuild with CUDA_HOME set: "
                + _extension.BUILD_HINT)
    try:
        importlib.import_module(MODULE)
    except ImportError as exc:
        return f"the CUDA kernels ({MODULE}) could not be loaded: {exc}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("flashnce::pairwise_lse_fwd", "CUDA"):
        return f"{MODULE} loaded but registered no CUDA kernel for flashnce::pairwise_lse_fwd"
    from .. import ops

    ops.register_compiled_ops()  # fake functions + autograd (idempotent)
    return None


def why_unavailable() -> str | None:
    """Why the CUDA kernels cannot be used in this process (None when they can)."""
    if "why" not in _state:
        _state["why"] = _load()
    return _state["why"]


class CudaKernel(CpuKernel):
    """forward / backward are the cpu backend's: the same torch.library ops, whose dispatcher
    runs the CUDA kernel for CUDA tensors. Only the acceptance rules differ."""

    name = "cuda"

    def not_supported_reasons(self, x, y, spec: TileSpec) -> list[str]:
        reasons = []
        if x.device.type != "cuda" or y.device.type != "cuda":
            reasons.append(f"tensors are not on a CUDA device (got {x.device.type} and "
                           f"{y.device.type})")
        elif x.device != y.device:
            reasons.append(f"x and y are on different devices ({x.device}, {y.device})")
        why = why_unavailable()
        if why is not None:
            reasons.append(why)
        if x.dtype not in DTYPES:
            reasons.append(f"dtype {x.dtype} not supported (fp32, fp64, bf16, fp16)")
        if spec.kind not in EPILOGUE_KINDS:
            reasons.append(f"epilogue kind {spec.kind!r} not implemented")
        if max(x.shape[0], y.shape[0]) >= 2**35:
            reasons.append("2**35 rows or more do not fit the CUDA grid")
        return reasons


BACKEND = CudaKernel()
