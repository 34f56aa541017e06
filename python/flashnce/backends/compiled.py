"""``cpu`` and ``cuda`` backends: the compiled C++ tile walks behind one op pair.

Both call ``flashnce::tile_fwd`` / ``tile_bwd`` (schemas in csrc/ops.cpp, contract in
``flashnce.core.spec``); the dispatcher picks the CPU kernel (csrc/cpu/, one module per ISA)
or the CUDA kernel (csrc/cuda/, ``flashnce._C_cuda``) from the tensors' device. They differ
only in what they accept, which is data here. Availability is resolved once at import by
``flashnce._extension``.

cpu: fused forward (row and column statistics in one pass over the tiles) and fused backward
(each tile recomputed once, both gradient GEMMs on it), parallel over row blocks,
deterministic for a given thread count; ``tile_fwd_grad`` (pair_sum) is the backward walk
that also folds the forward sums. Supports ``spec.FLAG_SAME_OPERAND`` (dY accumulated into
dX for y is x, no N x K dY). ``count`` (retrieval ranks, forward only) is its own two-phase
walk over the forward walk's tile grid (csrc/cpu/walk_count.h).
cuda: forward by row blocks and by column blocks, backward likewise; no atomics; bf16 / fp16
tiles on tensor cores with fp32 accumulation; no ``count`` kernel yet. No same-operand
backward yet (dX and dY come back separately and ``flashnce.features`` adds them).
"""

from __future__ import annotations

from .. import _extension
from .base import OpBackend


class CompiledOpBackend(OpBackend):
    fwd_op_name = "tile_fwd"
    bwd_op_name = "tile_bwd"
    fwd_grad_op_name = "tile_fwd_grad"  # one pass for stats with a local G (pair_sum)

    def __init__(self, name: str, device: str, why, max_rows: int, size_note: str,
                 stats: tuple, supports_same_operand: bool = False):
        self.name, self.devices, self.stats = name, (device,), stats
        self.supports_same_operand = supports_same_operand
        self._why, self._max_rows, self._size_note = why, max_rows, size_note

    def unavailable(self):
        return self._why()

    def input_reasons(self, x, y, tspec):
        if max(x.shape[0], y.shape[0], x.shape[-1]) >= self._max_rows:
            return [self._size_note]
        return []


CPU = CompiledOpBackend("cpu", "cpu", _extension.why_unavailable, 2**31,
                        "dimensions must be below 2**31 (BLAS int32 sizes)",
                        ("lse", "pair_sum", "masked_sum", "count"), supports_same_operand=True)
CUDA = CompiledOpBackend("cuda", "cuda", _extension.why_cuda_unavailable, 2**35,
                         "2**35 rows or more do not fit the CUDA grid",
                         ("lse", "pair_sum", "masked_sum"))
