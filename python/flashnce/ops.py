"""The pairwise log-sum-exp primitive as an autograd function over a chosen backend.

``pairwise_lse_prepared`` takes GEMM operands and per-row scalars (the prologue's output) and
returns (row_lse, col_lse); its backward recomputes tiles through the backend (no N x M tensor
is saved). Saved for backward: X, Y, alpha, beta, scale, k = 1/sqrt(c), row_lse, col_lse.
"""

from __future__ import annotations

import torch

from .backends.base import Backend, TileSpec


class _PairwiseLSE(torch.autograd.Function):
    @staticmethod
    def forward(x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec, backend: Backend):
        return backend.forward(x, y, alpha, beta, scale, inv_sqrt_c, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, alpha, beta, scale, inv_sqrt_c, spec, backend = inputs
        row_lse, col_lse = output
        ctx.save_for_backward(x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse)
        ctx.spec, ctx.backend = spec, backend
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_row, g_col):
        x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse = ctx.saved_tensors
        if g_row is None:
            g_row = torch.zeros_like(row_lse)
        if g_col is None:
            g_col = torch.zeros_like(col_lse)
        dx, dy, d_alpha, d_beta, gh = ctx.backend.backward(
            x, y, alpha, beta, scale, inv_sqrt_c, ctx.spec,
            row_lse, col_lse, g_row.contiguous(), g_col.contiguous())
        d_scale = gh if ctx.needs_input_grad[4] else None
        d_inv_sqrt_c = None
        # logit = scale * h and h is proportional to k = 1/sqrt(c) for the hyperbolic kind.
        if ctx.needs_input_grad[5] and ctx.spec.kind == "hyperbolic":
            d_inv_sqrt_c = scale * gh / inv_sqrt_c
        return dx, dy, d_alpha, d_beta, d_scale, d_inv_sqrt_c, None, None


def pairwise_lse_prepared(x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec, backend: Backend):
    """(row_lse [N], col_lse [M]) of logits scale * h_kind(<x_i, y_j>, alpha_i, beta_j)."""
    return _PairwiseLSE.apply(
        x.contiguous(), y.contiguous(), alpha.contiguous(), beta.contiguous(),
        scale, inv_sqrt_c, spec, backend)
