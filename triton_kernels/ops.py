"""The Triton kernels as torch.library ops, compile-safe (``torch.compile(fullgraph=True)``).

    flashnce::triton_lse_fwd(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal,
                             kappa) -> (row_lse, col_lse)
    flashnce::triton_lse_bwd(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal,
                             kappa, row_lse, col_lse, g_row, g_col)
        -> (dx, dy, d_alpha, d_beta, gh)

Registered with ``torch.library.triton_op`` (kernels launched through ``wrap_triton``, so
Inductor sees and can fuse around them) and joined by ``register_autograd``: the forward op is
differentiable in x, y, alpha, beta, scale and inv_sqrt_c (``logit = scale * h`` and, for the
hyperbolic kind, ``h`` is proportional to ``inv_sqrt_c``, so both gradients follow from gh).

Under ``TRITON_INTERPRET=1`` the kernels are ``InterpretedFunction`` objects, which
``wrap_triton`` cannot trace (it hands them back unwrapped, and the functional decomposition
that triton_op installs would then run them on fake tensors). In that mode the same launchers
are registered as opaque ``custom_op``s with explicit fake functions instead, so the compile
test still exercises the schema, fake and autograd registration on CPU.
"""

from __future__ import annotations

import torch
from torch.library import custom_op, register_autograd, triton_op

# INTERPRETED: decided by how the kernels were decorated (TRITON_INTERPRET at their import),
# not by the environment now: that is what wrap_triton will see.
from ..ops import setup_lse_context, theta_grads
from .launch import INTERPRETED, lse_backward, lse_forward

if INTERPRETED:
    def _register(name):
        return custom_op(name, mutates_args=())
else:
    def _register(name):
        return triton_op(name, mutates_args=())


@_register("flashnce::triton_lse_fwd")
def triton_lse_fwd(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                   scale: torch.Tensor, inv_sqrt_c: torch.Tensor, kind: str,
                   exclude_diagonal: bool, kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    return lse_forward(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa)


@_register("flashnce::triton_lse_bwd")
def triton_lse_bwd(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                   scale: torch.Tensor, inv_sqrt_c: torch.Tensor, kind: str,
                   exclude_diagonal: bool, kappa: float, row_lse: torch.Tensor,
                   col_lse: torch.Tensor, g_row: torch.Tensor, g_col: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor]:
    return lse_backward(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa,
                        row_lse, col_lse, g_row, g_col)


if INTERPRETED:
    @triton_lse_fwd.register_fake
    def _(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa):
        return (x.new_empty(x.shape[0], dtype=torch.float32),
                y.new_empty(y.shape[0], dtype=torch.float32))

    @triton_lse_bwd.register_fake
    def _(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal, kappa,
          row_lse, col_lse, g_row, g_col):
        return (torch.empty_like(x), torch.empty_like(y), torch.empty_like(alpha),
                torch.empty_like(beta), x.new_empty((), dtype=torch.float32))


@torch.autograd.function.once_differentiable  # the bwd op has no derivative: refuse, not 0
def _backward(ctx, g_row, g_col):
    x, y, alpha, beta, scale, inv_sqrt_c, row_lse, col_lse = ctx.saved_tensors
    g_row = torch.zeros_like(row_lse) if g_row is None else g_row.float().contiguous()
    g_col = torch.zeros_like(col_lse) if g_col is None else g_col.float().contiguous()
    dx, dy, d_alpha, d_beta, gh = triton_lse_bwd(
        x, y, alpha, beta, scale, inv_sqrt_c, ctx.kind, ctx.exclude_diagonal, ctx.kappa,
        row_lse, col_lse, g_row, g_col)
    d_scale, d_inv_sqrt_c = theta_grads(gh, scale, inv_sqrt_c, ctx.kind == "hyperbolic",
                                        *ctx.needs_input_grad[4:6])
    return dx, dy, d_alpha, d_beta, d_scale, d_inv_sqrt_c, None, None, None


register_autograd("flashnce::triton_lse_fwd", _backward, setup_context=setup_lse_context)


def pairwise_lse(x, y, alpha, beta, scale, inv_sqrt_c, kind, exclude_diagonal=False,
                 kappa=1e-6):
    """Differentiable (row_lse, col_lse) through the registered op (compile-friendly)."""
    return torch.ops.flashnce.triton_lse_fwd(
        x.contiguous(), y.contiguous(), alpha.contiguous(), beta.contiguous(), scale,
        inv_sqrt_c, kind, exclude_diagonal, kappa)
