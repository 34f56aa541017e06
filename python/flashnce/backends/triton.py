"""``triton`` backend: the fused Triton kernels of ``flashnce.triton_kernels``.

Accepts CUDA tensors when Triton is importable. CPU tensors run only through the Triton
interpreter, and only when asked for by name (``backend="triton"``) in a process whose
kernels were loaded with ``TRITON_INTERPRET=1``: ``backend="auto"`` never picks the
interpreter (it is thousands of times slower than the cpu backend). Every refusal says why.

The kernels are imported once, when this module loads (at ``import flashnce``): dynamo cannot
trace an import inside a call. Forward and backward are the registered ops
``flashnce::triton_tile_fwd`` / ``triton_tile_bwd`` (same schema as the C++ ops), whose
autograd is registered in ``flashnce.core.library``.
"""

from __future__ import annotations

import importlib.util

import torch

from .base import OpBackend


def _load():
    """(the kernels' ops module or None, why not)."""
    if importlib.util.find_spec("triton") is None:
        return None, "triton is not installed (pip install flashnce[triton])"
    try:
        from ..triton_kernels import ops
    except Exception as exc:  # a broken install must refuse, not crash dispatch
        return None, f"triton could not be imported: {exc!r}"
    from ..core import library

    library.register_compiled_ops()
    return ops, None


_OPS, _WHY = _load()
INTERPRETED = bool(_OPS is not None and _OPS.INTERPRETED)


class TritonBackend(OpBackend):
    name = "triton"
    fwd_op_name = "triton_tile_fwd"
    fwd_grad_op_name = "triton_tile_fwd_grad"  # one pass: 2 launches instead of 4
    bwd_op_name = "triton_tile_bwd"
    devices = ("cuda", "cpu")
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    stats = ("lse", "pair_sum", "masked_sum")  # no count kernel yet

    def unavailable(self):
        return _WHY

    def input_reasons(self, x, y, tspec):
        if x.device.type == "cpu" and not INTERPRETED:
            return ["CPU tensors run only under the Triton interpreter: set TRITON_INTERPRET=1 "
                    "before importing flashnce (meant for tests; it is slow)"]
        if x.device.type == "cuda" and INTERPRETED:
            return ["the Triton kernels were loaded under TRITON_INTERPRET=1, so they run only "
                    "on CPU tensors in this process"]
        return []

    def auto_candidate(self, x) -> bool:
        """``auto`` takes this backend for CUDA tensors only, never the interpreter."""
        return x.device.type == "cuda"


BACKEND = TritonBackend()
