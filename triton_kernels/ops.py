"""The Triton kernels as torch.library ops, compile-safe (``torch.compile(fullgraph=True)``).

    flashnce::triton_tile_fwd(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor theta,
                              Tensor[] relation, int[] options, float kappa)
        -> (Tensor row_stat, Tensor col_stat)
    flashnce::triton_tile_bwd(Tensor x, Tensor y, Tensor alpha, Tensor beta, Tensor theta,
                              Tensor[] relation, int[] options, float kappa, Tensor row_stat,
                              Tensor col_stat, Tensor g_row, Tensor g_col)
        -> (Tensor dx, Tensor dy, Tensor d_alpha, Tensor d_beta, Tensor d_theta)
    flashnce::triton_tile_fwd_grad(Tensor x, Tensor y, Tensor alpha, Tensor beta,
                                   Tensor theta, Tensor[] relation, int[] options, float kappa)
        -> (Tensor row_stat, Tensor col_stat, Tensor dx, Tensor dy, Tensor d_alpha,
            Tensor d_beta, Tensor d_theta)

The same argument order and semantics as the C++ ``flashnce::tile_fwd`` / ``tile_bwd`` /
``tile_fwd_grad``
(contract in ``flashnce.core.spec``), for fp32 / bf16 / fp16 operands (compute dtype fp32).
Statistics and upstream gradients have the stat's state shape (``spec.state_shape``: [N] and
[M0], or [N, 2] and [M0, 2] for masked_sum).
Autograd is not registered here: the core registers one backward for every compiled op
family, so this package imports nothing from ``flashnce`` but ``flashnce.core.spec``.

Registered with ``torch.library.triton_op`` (kernels launched through ``wrap_triton``, so
Inductor sees and can fuse around them). Under ``TRITON_INTERPRET=1`` the kernels are
``InterpretedFunction`` objects, which ``wrap_triton`` cannot trace (it hands them back
unwrapped, and the functional decomposition that triton_op installs would then run them on
fake tensors). In that mode the same launchers are registered as opaque ``custom_op``s with
explicit fake functions instead, so compile tests still exercise the schema and fakes on CPU.
"""

from __future__ import annotations

import torch
from torch.library import custom_op, triton_op

from flashnce.core import spec

# INTERPRETED: decided by how the kernels were decorated (TRITON_INTERPRET at their import),
# not by the environment now: that is what wrap_triton will see.
from .launch import (DTYPES, INTERPRETED, check_fwd_grad, tile_backward, tile_forward,
                     tile_forward_grad)

if INTERPRETED:
    def _register(name):
        return custom_op(name, mutates_args=())
else:
    def _register(name):
        return triton_op(name, mutates_args=())


def _check(x, y, alpha, beta, theta, relation, options):
    """Argument checks that need no data (shapes, dtypes, devices): ValueError before launch."""
    if x.dtype not in DTYPES or y.dtype != x.dtype:
        raise ValueError(f"x and y must share one of {DTYPES} (the Triton kernels have no "
                         f"float64 path), got {x.dtype} and {y.dtype}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x [N, K] and y [M, K] expected, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if not (x.is_contiguous() and y.is_contiguous()):
        raise ValueError("x and y must be contiguous")
    kind = int(options[spec.OPT_KIND]) if len(options) == spec.NUM_OPTIONS else -1
    r = spec.NUM_ROW_SCALARS[spec.KINDS[kind]] if 0 <= kind < len(spec.KINDS) else None
    for name, s, n in (("alpha", alpha, x.shape[0]), ("beta", beta, y.shape[0])):
        if r is not None and tuple(s.shape) != (n, r):
            raise ValueError(f"{name} must be [{n}, {r}] for kind {spec.KINDS[kind]!r}, got "
                             f"{tuple(s.shape)}")
        if s.dtype != torch.float32 or not s.is_contiguous():
            raise ValueError(f"{name} must be contiguous float32, got {s.dtype}")
    if tuple(theta.shape) != (spec.NUM_THETA,) or theta.dtype != torch.float32:
        raise ValueError(f"theta must be float32 [{spec.NUM_THETA}], got {theta.dtype} "
                         f"{tuple(theta.shape)}")
    for t in relation:
        if t.dtype != torch.int64 or not t.is_contiguous():
            raise ValueError(f"relation tensors must be contiguous int64, got {t.dtype}")
    for t in (y, alpha, beta, theta, *relation):
        if t.device != x.device:
            raise ValueError(f"every tensor must be on {x.device}, got one on {t.device}")


def _state_shapes(x, options):
    """The (row, column) state shapes of a call, or None where the options are malformed
    (the launcher's own checks refuse those)."""
    if len(options) != spec.NUM_OPTIONS or not 0 <= int(options[spec.OPT_STAT]) < len(
            spec.STATS):
        return None
    stat = spec.STATS[int(options[spec.OPT_STAT])]
    return (spec.state_shape(stat, x.shape[0]),
            spec.state_shape(stat, int(options[spec.OPT_COLS_BOTH])))


def _check_states(x, options, row_stat, col_stat, g_row, g_col):
    """The saved statistics and upstream gradients hold N * width and M0 * width values."""
    shapes = _state_shapes(x, options)
    if shapes is None:
        return
    row, col = shapes
    for name, t, shape in (("row_stat", row_stat, row), ("col_stat", col_stat, col),
                           ("g_row", g_row, row), ("g_col", g_col, col)):
        want = 1
        for d in shape:
            want *= d
        if t.numel() != want:
            raise ValueError(f"{name} must have {want} values (shape {tuple(shape)}) for "
                             f"statistic {spec.STATS[int(options[spec.OPT_STAT])]}, got "
                             f"{tuple(t.shape)}")


@_register("flashnce::triton_tile_fwd")
def triton_tile_fwd(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                    theta: torch.Tensor, relation: list[torch.Tensor], options: list[int],
                    kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, y, alpha, beta, theta, relation, options)
    return tile_forward(x, y, alpha, beta, theta, relation, options, kappa)


@_register("flashnce::triton_tile_bwd")
def triton_tile_bwd(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                    theta: torch.Tensor, relation: list[torch.Tensor], options: list[int],
                    kappa: float, row_stat: torch.Tensor, col_stat: torch.Tensor,
                    g_row: torch.Tensor, g_col: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor]:
    _check(x, y, alpha, beta, theta, relation, options)
    _check_states(x, options, row_stat, col_stat, g_row, g_col)
    return tile_backward(x, y, alpha, beta, theta, relation, options, kappa, row_stat,
                         col_stat, g_row, g_col)


def _check_fwd_grad(options):
    """lse and masked_sum (any stat without a local G) are refused by name; malformed options
    are left to the launcher's own checks."""
    if len(options) == spec.NUM_OPTIONS and 0 <= int(options[spec.OPT_STAT]) < len(spec.STATS):
        check_fwd_grad(int(options[spec.OPT_STAT]))


@_register("flashnce::triton_tile_fwd_grad")
def triton_tile_fwd_grad(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor,
                         beta: torch.Tensor, theta: torch.Tensor, relation: list[torch.Tensor],
                         options: list[int], kappa: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, y, alpha, beta, theta, relation, options)
    _check_fwd_grad(options)
    return tile_forward_grad(x, y, alpha, beta, theta, relation, options, kappa)


if INTERPRETED:
    @triton_tile_fwd.register_fake
    def _(x, y, alpha, beta, theta, relation, options, kappa):
        row, col = _state_shapes(x, options) or (x.shape[0], options[spec.OPT_COLS_BOTH])
        return (x.new_empty(row, dtype=torch.float32), y.new_empty(col, dtype=torch.float32))

    @triton_tile_bwd.register_fake
    def _(x, y, alpha, beta, theta, relation, options, kappa, row_stat, col_stat, g_row,
          g_col):
        return (torch.empty_like(x), torch.empty_like(y), torch.empty_like(alpha),
                torch.empty_like(beta), torch.empty_like(theta))

    @triton_tile_fwd_grad.register_fake
    def _(x, y, alpha, beta, theta, relation, options, kappa):
        _check_fwd_grad(options)
        row, col = _state_shapes(x, options) or (x.shape[0], options[spec.OPT_COLS_BOTH])
        return (x.new_empty(row, dtype=torch.float32), y.new_empty(col, dtype=torch.float32),
                torch.empty_like(x), torch.empty_like(y), torch.empty_like(alpha),
                torch.empty_like(beta), torch.empty_like(theta))
