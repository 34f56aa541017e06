"""torch.library registration of every compiled tile op: one fake, one autograd.

The C++ ops (``flashnce::tile_fwd`` / ``tile_bwd``, CPU and CUDA kernels) and the Triton ops
(``flashnce::triton_tile_fwd`` / ``triton_tile_bwd``) share one schema
(``flashnce.core.spec``), so one ``setup_context`` and one ``backward`` serve both pairs, and
one pair of fake functions serves the C++ ops (the Triton ops trace their launchers, or bring
their own fakes under the interpreter). Saved for backward: x, y, alpha, beta, theta, the
relation tensors and both stats -- no N x M tensor.

With ``spec.FLAG_SAME_OPERAND`` in the options (y is x) the backward op returns dX + dY as
dX and an empty dY [0, K] (so does the fake); the registered backward gives autograd None
for y.

The backward op has no derivative of its own: under create_graph the registered backward marks
its outputs (``_NotTwiceDifferentiable``), so a second-order gradient raises instead of
returning 0.
"""

from __future__ import annotations

import torch

from . import spec
from .autograd import autograd_grads, is_same_operand
from .numerics import compute_dtype

# (forward op, backward op) pairs with the contract's schema.
OP_PAIRS = {
    "flashnce::tile_fwd": "flashnce::tile_bwd",
    "flashnce::triton_tile_fwd": "flashnce::triton_tile_bwd",
}
_registered: set = set()


def _op(qualname: str):
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name)


def _fake_fwd(x, y, alpha, beta, theta, relation, options, kappa):
    cd = compute_dtype(x.dtype)
    stat = spec.STATS[options[spec.OPT_STAT]]
    return (x.new_empty(spec.state_shape(stat, x.shape[0]), dtype=cd),
            x.new_empty(spec.state_shape(stat, options[spec.OPT_COLS_BOTH]), dtype=cd))


def _fake_bwd(x, y, alpha, beta, theta, relation, options, kappa, row_stat, col_stat, g_row,
              g_col):
    dy = (y.new_empty((0, y.shape[1])) if is_same_operand(options[spec.OPT_FLAGS])
          else torch.empty_like(y))
    return (torch.empty_like(x), dy, torch.empty_like(alpha),
            torch.empty_like(beta), torch.empty_like(theta))


def _fake_fwd_grad(x, y, alpha, beta, theta, relation, options, kappa):
    return (*_fake_fwd(x, y, alpha, beta, theta, relation, options, kappa),
            *_fake_bwd(x, y, alpha, beta, theta, relation, options, kappa, None, None, None,
                       None))


# One-pass forward + gradient ops (no autograd of their own: flashnce.core.autograd wraps
# them). Fakes for the C++ one; the Triton one traces its launcher.
FWD_GRAD_OPS = ("flashnce::tile_fwd_grad", "flashnce::triton_tile_fwd_grad")


def _setup_context(ctx, inputs, output):
    x, y, alpha, beta, theta, relation, options, kappa = inputs
    row_stat, col_stat = output
    ctx.save_for_backward(x, y, alpha, beta, theta, row_stat, col_stat, *relation)
    ctx.options, ctx.kappa = list(options), kappa


class _NotTwiceDifferentiable(torch.autograd.Function):
    """Identity whose backward refuses: marks the compiled backward's outputs when the
    upstream gradient is itself part of a graph (create_graph=True), so a second-order
    gradient raises instead of coming back as a silent 0."""

    @staticmethod
    def forward(t, anchor):  # anchor: a tensor that requires grad, so the output does too
        return t.view_as(t)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):  # noqa: ARG004
        raise RuntimeError("flashnce: trying to differentiate twice a tile op whose backward "
                           "has no derivative (second-order gradients are not supported)")


def _make_backward(bwd_name: str):
    # Not torch's @once_differentiable: it detaches every returned gradient, and the list of
    # None gradients of the relation tensors (which the op's input structure requires) cannot
    # be detached.
    def backward(ctx, g_row, g_col):
        x, y, alpha, beta, theta, row_stat, col_stat, *relation = ctx.saved_tensors
        anchor = next((g for g in (g_row, g_col) if g is not None and g.requires_grad), None)
        graph = torch.is_grad_enabled() and anchor is not None
        with torch.no_grad():
            g_row = torch.zeros_like(row_stat) if g_row is None else g_row.contiguous()
            g_col = torch.zeros_like(col_stat) if g_col is None else g_col.contiguous()
            grads = _op(bwd_name)(
                x, y, alpha, beta, theta, list(relation), ctx.options, ctx.kappa, row_stat,
                col_stat, g_row.to(row_stat.dtype), g_col.to(col_stat.dtype))
        grads = autograd_grads(grads, ctx.options[spec.OPT_FLAGS])  # dY None if merged
        if graph:
            grads = [None if t is None else _NotTwiceDifferentiable.apply(t, anchor)
                     for t in grads]
        # One None per relation tensor: autograd wants the structure of the inputs.
        return (*grads, [None] * len(relation), None, None)

    return backward


def _defined(qualname: str) -> bool:
    namespace, name = qualname.split("::")
    return hasattr(getattr(torch.ops, namespace), name)


def register_compiled_ops(*, fakes: bool = True) -> None:
    """Register fakes (C++ ops only) and autograd for every defined op pair (idempotent)."""
    for fwd, bwd in OP_PAIRS.items():
        if fwd in _registered or not (_defined(fwd) and _defined(bwd)):
            continue
        if fakes and not fwd.startswith("flashnce::triton_"):
            torch.library.register_fake(fwd)(_fake_fwd)
            torch.library.register_fake(bwd)(_fake_bwd)
        torch.library.register_autograd(fwd, _make_backward(bwd), setup_context=_setup_context)
        _registered.add(fwd)
    for op in FWD_GRAD_OPS:
        if op in _registered or not _defined(op):
            continue
        if fakes and not op.startswith("flashnce::triton_"):
            torch.library.register_fake(op)(_fake_fwd_grad)
        _registered.add(op)
