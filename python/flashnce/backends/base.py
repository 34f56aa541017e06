"""The contract every kernel backend implements (see ``../shared/DESIGN.md``, "The primitive").

A backend computes, without ever holding an N x M tensor,

    forward:  row_lse[i] = log sum_j exp l_ij,   col_lse[j] = log sum_i exp l_ij
    backward: G_ij = g_row[i] exp(l_ij - row_lse[i]) + g_col[j] exp(l_ij - col_lse[j])
              dX = (G * dl/dp) @ Y,   dY = (G * dl/dp)^T @ X,
              d_alpha[i] = sum_j G_ij dl/dalpha_i,   d_beta[j] = sum_i G_ij dl/dbeta_j,
              gh = sum_ij G_ij h_ij                  (h = l / scale)

with l_ij = scale * h_kind(<X_i, Y_j>, alpha_i, beta_j) from ``flashnce.geometry`` and, when
``exclude_diagonal``, l_ii = -inf (G_ii = 0, never evaluated in backward).

Tensors handed to a backend are already validated and contiguous:
X [N, K], Y [M, K] in fp32 / fp64 / bf16 / fp16 (same dtype); alpha [N, r], beta [M, r],
scale and inv_sqrt_c 0-d, all in the compute dtype (fp64 for fp64 inputs, else fp32);
g_row [N], g_col [M] compute dtype (zeros where the caller has no upstream gradient).
Outputs: row_lse, col_lse, d_alpha, d_beta, gh in the compute dtype; dX, dY in X's dtype,
freshly allocated and aliasing nothing (``flashnce.features`` adds into them in place).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileSpec:
    """Static options of one pairwise-LSE call (travel together; hashable for caching)."""

    kind: str  # epilogue kind, see flashnce.geometry.EPILOGUE_KINDS
    exclude_diagonal: bool
    kappa: float  # distance clamp constant (geometry.clamp_kappa)


class Backend:
    """Base class: a named implementation that can explain why it refuses an input."""

    name = "?"

    def not_supported_reasons(self, x: torch.Tensor, y: torch.Tensor, spec: TileSpec) -> list[str]:
        raise NotImplementedError

    def forward(self, x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec):
        """-> (row_lse [N], col_lse [M])."""
        raise NotImplementedError

    def backward(self, x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec,
                 row_lse, col_lse, g_row, g_col):
        """-> (dX, dY, d_alpha, d_beta, gh)."""
        raise NotImplementedError
