"""The pairwise log-sum-exp primitive as an autograd function over a chosen backend.

``pairwise_lse_prepared`` takes GEMM operands (the features as given) and per-row scalars (the
prologue's output) and returns (row_lse, col_lse); its backward recomputes tiles through the
backend (no N x M tensor is saved). Saved for backward: X, Y, alpha, beta, scale, k = 1/sqrt(c), row_lse, col_lse.
Every backend returns dX and dY as fresh tensors that alias nothing: ``flashnce.features`` adds
the norm and positive-pair gradient terms into them in place.

Backends with compiled kernels (``op_based = True``, e.g. ``cpu``) are instead called through
the torch.library ops ``flashnce::pairwise_lse_fwd`` / ``flashnce::pairwise_lse_bwd`` (schemas in
csrc/ops.cpp), whose fake functions and autograd are registered here by
``register_compiled_ops()`` once the extension loads; that path traces under
``torch.compile(fullgraph=True)`` without graph breaks.
"""

from __future__ import annotations

import torch

from .backends.base import Backend, TileSpec
from .geometry import EPILOGUE_KINDS, NUM_ROW_SCALARS, compute_dtype


def theta_grads(gh, scale, inv_sqrt_c, hyperbolic: bool, needs_scale=True, needs_k=True):
    """(dL/dscale, dL/dk), k = 1/sqrt(c), from the kernels' gh = sum_ij G_ij h_ij.

    logit = scale * h, so dL/dscale = gh; for the hyperbolic kind h is proportional to k
    (its only explicit curvature dependence), so dL/dk = scale * gh / k. None where unneeded.
    """
    d_scale = gh.to(scale.dtype) if needs_scale else None
    d_k = (scale * gh / inv_sqrt_c).to(inv_sqrt_c.dtype) if needs_k and hyperbolic else None
    return d_scale, d_k


def setup_lse_context(ctx, inputs, output):
    """setup_context shared by the op-based paths (C++ and Triton ops): same argument order."""
    x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa = inputs
    row_lse, col_lse = output
    ctx.save_for_backward(x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse)
    ctx.kind, ctx.exclude_diagonal, ctx.kappa = kind, exclude_diagonal, kappa


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
        d_scale, d_inv_sqrt_c = theta_grads(gh, scale, inv_sqrt_c, ctx.spec.kind == "hyperbolic",
                                            *ctx.needs_input_grad[4:6])
        return dx, dy, d_alpha, d_beta, d_scale, d_inv_sqrt_c, None, None


def pairwise_lse_prepared(x, y, alpha, beta, scale, inv_sqrt_c, spec: TileSpec, backend: Backend):
    """(row_lse [N], col_lse [M]) of logits scale * h_kind(<x_i, y_j>, alpha_i, beta_j)."""
    if getattr(backend, "op_based", False):  # differentiable through register_autograd below
        return backend.forward(x.contiguous(), y.contiguous(), alpha.contiguous(),
                               beta.contiguous(), scale, inv_sqrt_c, spec)
    return _PairwiseLSE.apply(
        x.contiguous(), y.contiguous(), alpha.contiguous(), beta.contiguous(),
        scale, inv_sqrt_c, spec, backend)


# --------------------------------------------------------------------------------------------
# torch.library ops of the compiled extension: fake functions and autograd.
# --------------------------------------------------------------------------------------------

_HYPERBOLIC = EPILOGUE_KINDS.index("hyperbolic")
_registered = False


def _check_fake(x, y, alpha, beta, kind):
    torch._check(x.dim() == 2 and y.dim() == 2, lambda: "x [N, K] and y [M, K] expected")
    torch._check(x.shape[1] == y.shape[1], lambda: "x and y need the same feature size")
    torch._check(0 <= kind < len(EPILOGUE_KINDS), lambda: f"unknown epilogue kind {kind}")
    r = NUM_ROW_SCALARS[EPILOGUE_KINDS[kind]]
    torch._check(alpha.shape[0] == x.shape[0] and alpha.shape[1] == r,
                 lambda: f"alpha must be [N, {r}]")
    torch._check(beta.shape[0] == y.shape[0] and beta.shape[1] == r,
                 lambda: f"beta must be [M, {r}]")


def _fake_fwd(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa):
    _check_fake(x, y, alpha, beta, kind)
    cd = compute_dtype(x.dtype)
    return x.new_empty((x.shape[0],), dtype=cd), x.new_empty((y.shape[0],), dtype=cd)


def _fake_bwd(x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse, g_row, g_col, kind,
              exclude_diagonal, kappa):
    _check_fake(x, y, alpha, beta, kind)
    cd = compute_dtype(x.dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(y, memory_format=torch.contiguous_format),
            alpha.new_empty(alpha.shape, dtype=cd), beta.new_empty(beta.shape, dtype=cd),
            x.new_empty((), dtype=cd))


@torch.autograd.function.once_differentiable  # the bwd op has no derivative: refuse, not 0
def _backward_fwd(ctx, g_row, g_col):
    x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse = ctx.saved_tensors
    g_row = torch.zeros_like(row_lse) if g_row is None else g_row.contiguous()
    g_col = torch.zeros_like(col_lse) if g_col is None else g_col.contiguous()
    dx, dy, d_alpha, d_beta, gh = torch.ops.flashnce.pairwise_lse_bwd(
        x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse, g_row, g_col,
        ctx.kind, ctx.exclude_diagonal, ctx.kappa)
    d_scale, d_inv_sqrt_c = theta_grads(gh, scale, inv_sqrt_c, ctx.kind == _HYPERBOLIC,
                                        *ctx.needs_input_grad[4:6])
    return dx, dy, d_alpha, d_beta, d_scale, d_inv_sqrt_c, None, None, None


def register_compiled_ops():
    """Fake functions and autograd of the extension's ops (called once it is loaded)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("flashnce::pairwise_lse_fwd")(_fake_fwd)
    torch.library.register_fake("flashnce::pairwise_lse_bwd")(_fake_bwd)
    torch.library.register_autograd("flashnce::pairwise_lse_fwd", _backward_fwd,
                                    setup_context=setup_lse_context)
    _registered = True
