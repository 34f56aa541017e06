"""Per-row feature statistics, with a backward that adds every O(N d) gradient term in place.

A loss depends on the raw features x [N, d] and y [M, d] along three paths:

  1. the tile walk, whose GEMM operands are x and y as given  -> the kernel returns dX, dY;
  2. the squared row norms q_i = |x_i|^2 that the prologues turn into per-row scalars
     (n = |x|, a = |x|^2, rho = sqrt(c)|x|, ...)              -> dx_i += 2 g_q_i x_i;
  3. the positive-pair dots p_i = <x_i, y_{t_i}> of InfoNCE     -> dx_i += g_p_i y_{t_i},
                                                                  dy_{t_i} += g_p_i x_i.

Left to autograd, paths 2 and 3 each allocate N x d gradients that are then summed: at
N = 32768, d = 128 that tripled the loss's memory above the inputs. ``feature_stats`` is one
autograd node that returns aliases of x and y (the kernel's operands) together with q and p.
Autograd runs its backward after all of their consumers, so it receives the kernel's dX and dY
(fresh tensors the backend allocated) and adds paths 2 and 3 into them with ``addcmul_`` in fp32
opmath: the backward's peak is dX + dY + the kernel's workspace; nothing else of size N x d is
allocated outside the kernel (the CPU kernel itself widens bf16/fp16 inputs to fp32).

Same-set losses (y is x): a backend that supports ``spec.FLAG_SAME_OPERAND`` returns dX + dY
as dX and no dY, and every term of y's side is added into that one gradient, so the peak is
dX + the kernel's workspace; otherwise dY is added into dX here.

Temporaries (the products of the row dots, fp32 copies of bf16 rows) are bounded by working
in row chunks of about 4 MiB; under torch.compile one expression is used instead, which
inductor fuses without materialising it.
"""

from __future__ import annotations

import torch

from .core.numerics import NORM_EPS, compute_dtype

# Rows per chunk are chosen so one fp32 chunk of a product is about 4 MiB.
_CHUNK_ELEMENTS = 1 << 20


def _row_chunks(n: int, d: int):
    """(start, stop) row ranges covering [0, n); one range when compiling (inductor fuses)."""
    if torch.compiler.is_compiling():
        yield 0, n
        return
    step = max(1, _CHUNK_ELEMENTS // max(1, d))
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _rows(t: torch.Tensor, index, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of t, or rows index[start:stop] when an index is given."""
    return t[start:stop] if index is None else t[index[start:stop]]


def rowwise_dot(a: torch.Tensor, b: torch.Tensor, index=None) -> torch.Tensor:
    """[N] = sum_k a_ik b_{index_i, k} (index=None: b_ik) in the compute dtype (fp32 for
    bf16/fp16 inputs).

    Without autograd recording (e.g. inside ``_FeatureStats.forward``) the products are formed
    in row chunks, so no N x d temporary exists. Under autograd one expression is used: the
    backward of chunk slices would allocate a full-size zero gradient per chunk.
    """
    cd = compute_dtype(a.dtype)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return (a.to(cd) * _rows(b, index, 0, a.shape[0]).to(cd)).sum(-1)
    out = a.new_empty((a.shape[0],), dtype=cd)
    for start, stop in _row_chunks(a.shape[0], a.shape[1]):
        rows_b = _rows(b, index, start, stop)
        out[start:stop] = (a[start:stop].to(cd) * rows_b.to(cd)).sum(-1)
    return out


def _add_scaled_rows(dst, src, coef, index=None):
    """dst_i += coef_i * src_{index_i} (index=None: src_i) in place, in row chunks.

    coef [N] is fp32 (or fp64): addcmul_ then runs in fp32 opmath and rounds once into a
    bf16/fp16 dst. On CPU that promotion makes fp32 copies of its operands, which chunking
    keeps at ~4 MiB instead of N x d.
    """
    coef = coef.unsqueeze(1)
    for start, stop in _row_chunks(dst.shape[0], dst.shape[1]):
        dst[start:stop].addcmul_(_rows(src, index, start, stop), coef[start:stop])


def _scatter_add_scaled_rows(dst, src, coef, index):
    """dst_{index_i} += coef_i * src_i in place (rows may share an index: contributions sum).

    Deterministic on both devices: on CPU index_add_ (index_put_ with accumulate uses float
    atomics there beyond 32768 elements), on CUDA index_put_(accumulate=True) (index_add_
    uses atomics there). Each chunk's contributions are rounded to dst's dtype before the
    add (a second rounding for bf16/fp16, unlike ``_add_scaled_rows``).
    """
    for start, stop in _row_chunks(src.shape[0], src.shape[1]):
        rows = (src[start:stop].to(coef.dtype) * coef[start:stop].unsqueeze(1)).to(dst.dtype)
        if dst.device.type == "cpu":
            dst.index_add_(0, index[start:stop], rows)
        else:
            dst.index_put_((index[start:stop],), rows, accumulate=True)


def _owned_gradient(grad, like: torch.Tensor, other=None) -> torch.Tensor:
    """A gradient tensor this node may add into in place.

    The kernels return fresh contiguous dX / dY (backends/base.py); anything else (no
    gradient, an expanded or a view tensor, or one sharing storage with ``other``, the
    gradient of the other alias) is replaced by a private copy first. Under torch.compile
    the copy is a graph value that functionalisation and inductor fuse away (a backward may
    not mutate its inputs there).
    """
    if grad is None:
        return torch.zeros_like(like, memory_format=torch.contiguous_format)
    if torch.compiler.is_compiling():
        return grad.clone(memory_format=torch.contiguous_format)
    shared = other is not None and grad.untyped_storage().data_ptr() == \
        other.untyped_storage().data_ptr()
    if shared or not grad.is_contiguous() or grad._is_view():
        return grad.clone(memory_format=torch.contiguous_format)
    return grad


class _FeatureStats(torch.autograd.Function):
    """(x, y, targets) -> (x', y', q_x, q_y, p); see the module docstring.

    x', y' alias x, y (the operands handed to the kernel). q_x [N], q_y [M] are squared row
    norms and p [N] the positive-pair dots <x_i, y_{t_i}> (t = targets, or i when targets is
    None; p is empty when with_positives is False), all in the compute dtype.

    scale_invariant (cosine): the loss depends on each row only through its direction while
    |x_i| > eps, so its exact gradient is orthogonal to x_i. The backward then projects the
    assembled gradient, dx_i -= (<dx_i, x_i> / |x_i|^2) x_i: this removes only rounding, the
    radial part of the error left by a bf16/fp16 kernel dX and the separately added norm term
    that cancels it (at d = 1 the whole gradient is that error, and becomes 0 to fp32
    rounding).
    Saved for backward: x, y, targets, q_x, q_y (no copies).
    """

    @staticmethod
    def forward(x, y, targets, with_positives: bool, scale_invariant: bool, same_set: bool):
        q_x, q_y = rowwise_dot(x, x), rowwise_dot(y, y)
        if with_positives:
            y_pos = y if targets is not None else y[: x.shape[0]]
            p = rowwise_dot(x, y_pos, targets)
        else:
            p = x.new_empty((0,), dtype=compute_dtype(x.dtype))
        return x.view_as(x), y.view_as(y), q_x, q_y, p

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, targets, with_positives, scale_invariant, same_set = inputs
        ctx.save_for_backward(x, y, targets, output[2], output[3])
        ctx.with_positives, ctx.scale_invariant = with_positives, scale_invariant
        ctx.same_set = same_set
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable  # in-place on gradients; kernels are too
    def backward(ctx, g_x, g_y, g_qx, g_qy, g_p):
        x, y, targets, q_x, q_y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[:2]
        dx = _owned_gradient(g_x, x) if need_x else None
        if ctx.same_set and g_y is None:
            # y is x and the kernel returned dX + dY as dX (spec.FLAG_SAME_OPERAND), or y's
            # alias got no gradient: y's terms below go into the one gradient, and no N x d
            # dY is allocated.
            dy = dx
        else:
            dy = _owned_gradient(g_y, y, other=g_x) if need_y else None
        # Path 2: d|x_i|^2 / dx_i = 2 x_i.
        if dx is not None and g_qx is not None:
            _add_scaled_rows(dx, x, 2.0 * g_qx)
        if dy is not None and g_qy is not None:
            _add_scaled_rows(dy, y, 2.0 * g_qy)
        # Path 3: the positive pairs (x_i, y_{t_i}).
        if ctx.with_positives and g_p is not None:
            n = x.shape[0]
            if dx is not None:
                _add_scaled_rows(dx, y if targets is not None else y[:n], g_p, targets)
            if dy is not None and targets is None:
                _add_scaled_rows(dy[:n], x, g_p)
            elif dy is not None:
                _scatter_add_scaled_rows(dy, x, g_p, targets)
        if dy is dx:
            dy = None  # already one gradient
        elif ctx.same_set and dx is not None and dy is not None:
            # y is a view of x: hand autograd one gradient (dX += dY in place), not two N x d
            # tensors for it to add into a third.
            dx, dy = dx.add_(dy), None
        if ctx.scale_invariant:
            for grad, feats, q in ((dx, x, q_x), (dy, y, q_y)):
                if grad is not None:
                    _project_out_radial(grad, feats, q)
        return dx, dy, None, None, None, None


def _project_out_radial(grad, feats, q):
    """grad_i -= (<grad_i, x_i> / q_i) x_i in place, for rows with |x_i| > eps (below it the
    norm is clamped, the logit is not scale invariant, and the row is left alone)."""
    radial = rowwise_dot(grad, feats)
    coef = torch.where(q > NORM_EPS**2, -radial / torch.where(q > 0, q, 1.0), 0.0)
    _add_scaled_rows(grad, feats, coef)


def feature_stats(x, y, targets=None, with_positives=False, scale_invariant=False):
    """(x', y', |x_i|^2 [N], |y_j|^2 [M], <x_i, y_{t_i}> [N] or empty) as one autograd node.

    Use x', y' (aliases of x, y) wherever the features enter the graph, so that all O(N d)
    gradient terms meet in this node's backward. Invariant: x' and y' are consumed only by
    flashnce's own ops (kernels, gathers, ``rowwise_dot``), whose gradients are fresh tensors
    or views; the backward adds into a contiguous non-view gradient in place, which would be
    wrong for a tensor that autograd also hands to some other input.
    """
    same_set = y is x
    if same_set:  # same-set losses: dynamo refuses one tensor passed twice to a Function
        y = x.view_as(x)
    return _FeatureStats.apply(x, y, targets, with_positives, scale_invariant, same_set)
