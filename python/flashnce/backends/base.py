"""What a backend is: the tile op contract's two raw functions, and its capabilities as data.

The contract itself -- kinds x stats x relations, the argument layout of ``forward_raw`` /
``backward_raw`` (identical to the compiled ops ``flashnce::tile_fwd`` / ``tile_bwd``) and their
semantics -- is defined once in ``flashnce.core.spec``. A backend never holds an N x M tensor:

    forward_raw(x, y, alpha, beta, theta, tspec)            -> (row_stat [N], col_stat [M0])
    backward_raw(x, y, alpha, beta, theta, tspec,
                 row_stat, col_stat, g_row, g_col)          -> (dX, dY, d_alpha, d_beta, d_theta)
    forward_grad_raw(x, y, alpha, beta, theta, tspec)       -> forward_raw's stats + backward_raw's
                                                               gradients for g_row = 1, g_col = 0
                                                               (stats with a local G only)

Inputs are validated and contiguous: X [N, K], Y [M, K] (fp32 / fp64 / bf16 / fp16, same
dtype), alpha [N, r], beta [M, r], theta [3] = (scale, 1/sqrt(c), bias) in the compute dtype.
dX, dY come back in X's dtype, freshly allocated and aliasing nothing (``flashnce.features``
adds the norm and positive-pair terms into them in place).

``tile_stat`` is the differentiable entry point: op-based backends call their op (whose
autograd is registered once for all compiled ops in ``flashnce.core.library``); Python
backends go through the one autograd Function ``flashnce.core.autograd.TileStat``.
``row_sum`` is the one-pass differentiable sum_i row_stat[i] of a stat with a local G
(``flashnce.core.autograd.row_sum_function``, for every backend). ``forward_grad_raw``
defaults to ``forward_raw`` then ``backward_raw`` (two walks); backends with a one-pass walk
override it.

Same operand: when y is x (``flashnce.core.autograd.same_operand``: the same-set losses) and
the backend declares ``supports_same_operand``, ``tile_stat`` sets ``spec.FLAG_SAME_OPERAND``
in the call's flags, and the backward returns dX + dY as dX and an empty dY (autograd gets
None for y): one N x d gradient instead of two alive at once. Elsewhere dX and dY come back
separately and ``flashnce.features`` adds them. The statistics are the same either way.

Capabilities (devices, dtypes, kinds, stats, relations) are data: ``not_supported_reasons``
is derived from them plus ``unavailable()`` (resolved once, at import, by ``dispatch``) and
``input_reasons`` (limits that depend on the input, e.g. sizes). The test matrix is generated
from the same data.
"""

from __future__ import annotations

import torch

from ..core import spec
from ..core.numerics import compute_dtype
from ..core.autograd import row_sum_function, same_operand, tile_stat_function, with_same_operand
from ..core.tilespec import TileSpec
from ..validate import functorch_transform

__all__ = ["ALL_DTYPES", "Backend", "OpBackend", "TileSpec"]

ALL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class Backend:
    """A named implementation of the tile op that can explain why it refuses an input."""

    name = "?"
    devices: tuple | None = ("cpu",)  # device types; None: any device PyTorch runs on
    dtypes: tuple = ALL_DTYPES
    kinds: tuple = spec.KINDS
    stats: tuple = spec.STATS
    relations: tuple = spec.RELATIONS
    # torch.func.grad needs every autograd.Function on the path to support functorch: true
    # of the Python backends, not of the compiled ops' registered autograd.
    supports_func_grad = True
    # Whether the backward honours spec.FLAG_SAME_OPERAND (dX + dY returned as dX, dY empty).
    supports_same_operand = False

    def unavailable(self) -> str | None:
        """Why this backend cannot run in this process at all (None when it can)."""
        return None

    def auto_candidate(self, x: torch.Tensor) -> bool:
        """Whether ``backend="auto"`` may pick this backend for x (default: yes)."""
        return True

    def input_reasons(self, x: torch.Tensor, y: torch.Tensor, tspec: TileSpec) -> list[str]:
        """Refusals that depend on the input beyond device / dtype / axes (e.g. sizes)."""
        return []

    def not_supported_reasons(self, x: torch.Tensor, y: torch.Tensor,
                              tspec: TileSpec) -> list[str]:
        reasons = []
        why = self.unavailable()
        if why is not None:
            reasons.append(why)
        if self.devices is not None and (x.device.type not in self.devices
                                         or y.device.type not in self.devices):
            reasons.append(f"needs {' or '.join(d.upper() for d in self.devices)} tensors, got "
                           f"{x.device.type} and {y.device.type}")
        elif x.device != y.device:
            reasons.append(f"x is on {x.device} but y is on {y.device}")
        if x.dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"dtype {x.dtype} not supported ({names})")
        for axis, value, known in (("epilogue kind", tspec.kind, self.kinds),
                                   ("statistic", tspec.stat, self.stats),
                                   ("relation", tspec.relation.name, self.relations)):
            if value not in known:
                reasons.append(f"{axis} {value!r} not implemented")
        if not self.supports_func_grad and functorch_transform() == "grad":
            reasons.append("does not run under torch.func.grad (use backend='torch', or "
                           "torch.autograd.grad)")
        return reasons + count_size_reasons(x, y, tspec) + self.input_reasons(x, y, tspec)

    # -- the contract ------------------------------------------------------------------------
    def forward_raw(self, x, y, alpha, beta, theta, tspec: TileSpec):
        raise NotImplementedError

    def backward_raw(self, x, y, alpha, beta, theta, tspec: TileSpec, row_stat, col_stat,
                     g_row, g_col):
        raise NotImplementedError

    def forward_grad_raw(self, x, y, alpha, beta, theta, tspec: TileSpec):
        row, col = self.forward_raw(x, y, alpha, beta, theta, tspec)
        grads = self.backward_raw(x, y, alpha, beta, theta, tspec, row, col,
                                  torch.ones_like(row), torch.zeros_like(col))
        return (row, col, *grads)

    def operand_spec(self, x, y, tspec: TileSpec) -> TileSpec:
        """tspec with FLAG_SAME_OPERAND when y is x and this backend supports it."""
        return with_same_operand(tspec, self.supports_same_operand and same_operand(x, y))

    def tile_stat(self, x, y, alpha, beta, theta, tspec: TileSpec):
        """Differentiable (row_stat, col_stat) in x, y, alpha, beta and theta."""
        return tile_stat_function(self, x, y, alpha, beta, theta,
                                  self.operand_spec(x, y, tspec))

    def row_sum(self, x, y, alpha, beta, theta, tspec: TileSpec):
        """Differentiable sum_i row_stat[i] from one walk (stats with a local G)."""
        return row_sum_function(self, x, y, alpha, beta, theta, tspec)


def count_size_reasons(x: torch.Tensor, y: torch.Tensor, tspec: TileSpec) -> list[str]:
    """``count`` holds ranks in the compute dtype: refuse sizes where fp32 is not exact."""
    if tspec.stat != "count" or compute_dtype(x.dtype) == torch.float64:
        return []
    if max(x.shape[0], y.shape[0]) >= spec.COUNT_EXACT_FP32:
        return [f"statistic 'count' holds ranks in float32 for {x.dtype} inputs, exact only "
                f"below 2**24 rows and columns (got N={x.shape[0]}, M={y.shape[0]}): pass "
                f"float64 features"]
    return []


class OpBackend(Backend):
    """A backend whose raw functions are a pair of registered torch.library ops with the
    contract's schema; their autograd and fakes are registered in ``flashnce.core.library``,
    so eager and ``torch.compile`` see the same op pair."""

    supports_func_grad = False

    fwd_op_name = "?"
    bwd_op_name = "?"
    fwd_grad_op_name: str | None = None  # one-pass forward + gradients, if the backend has it

    def _ops(self):
        namespace = torch.ops.flashnce
        return getattr(namespace, self.fwd_op_name), getattr(namespace, self.bwd_op_name)

    def forward_raw(self, x, y, alpha, beta, theta, tspec: TileSpec):
        fwd, _ = self._ops()
        return fwd(x, y, alpha, beta, theta, list(tspec.relation.tensors),
                   tspec.options(y.shape[0]), tspec.kappa)

    def backward_raw(self, x, y, alpha, beta, theta, tspec: TileSpec, row_stat, col_stat,
                     g_row, g_col):
        _, bwd = self._ops()
        return bwd(x, y, alpha, beta, theta, list(tspec.relation.tensors),
                   tspec.options(y.shape[0]), tspec.kappa, row_stat, col_stat, g_row, g_col)

    def forward_grad_raw(self, x, y, alpha, beta, theta, tspec: TileSpec):
        if self.fwd_grad_op_name is None:
            return super().forward_grad_raw(x, y, alpha, beta, theta, tspec)
        op = getattr(torch.ops.flashnce, self.fwd_grad_op_name)
        return op(x, y, alpha, beta, theta, list(tspec.relation.tensors),
                  tspec.options(y.shape[0]), tspec.kappa)

    def tile_stat(self, x, y, alpha, beta, theta, tspec: TileSpec):
        return self.forward_raw(x, y, alpha, beta, theta, self.operand_spec(x, y, tspec))
