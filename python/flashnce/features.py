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
opmath: the backward's peak is dX + dY + the kernel's workspace, nothing else of size N x d.

Forward temporaries (the products of the row dots) are bounded by working in row chunks of
about 4 MiB; under torch.compile one expression is used instead, which inductor fuses into a
reduction that never materialises the product.
"""

from __future__ import annotations

import torch

from .geometry import compute_dtype

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
    bf16/fp16 inputs), without an N x d temporary."""
    cd = compute_dtype(a.dtype)
    out = a.new_empty((a.shape[0],), dtype=cd)
    for start, stop in _row_chunks(a.shape[0], a.shape[1]):
        rows_b = _rows(b, index, start, stop)
        out[start:stop] = (a[start:stop].to(cd) * rows_b.to(cd)).sum(-1)
    return out


def _owned_gradient(grad, like: torch.Tensor) -> torch.Tensor:
    """A gradient tensor this node may add into in place.

    The kernels return fresh contiguous dX / dY; anything else (no gradient, an expanded or
    a view tensor from some other consumer) is replaced by a private copy first. Under
    torch.compile the copy is a graph value that functionalisation and inductor fuse away.
    """
    if grad is None:
        return torch.zeros_like(like, memory_format=torch.contiguous_format)
    if torch.compiler.is_compiling() or not grad.is_contiguous() or grad._is_view():
        return grad.clone(memory_format=torch.contiguous_format)
    return grad


class _FeatureStats(torch.autograd.Function):
    """(x, y, targets) -> (x', y', q_x, q_y, p); see the module docstring.

    x', y' alias x, y (the operands handed to the kernel). q_x [N], q_y [M] are squared row
    norms and p [N] the positive-pair dots <x_i, y_{t_i}> (t = targets, or i when targets is
    None; p is empty when with_positives is False), all in the compute dtype.
    Saved for backward: x, y, targets (no copies).
    """

    @staticmethod
    def forward(x, y, targets, with_positives: bool):
        q_x, q_y = rowwise_dot(x, x), rowwise_dot(y, y)
        if with_positives:
            y_pos = y if targets is not None else y[: x.shape[0]]
            p = rowwise_dot(x, y_pos, targets)
        else:
            p = x.new_empty((0,), dtype=compute_dtype(x.dtype))
        return x.view_as(x), y.view_as(y), q_x, q_y, p

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, targets, with_positives = inputs
        ctx.save_for_backward(x, y, targets)
        ctx.with_positives = with_positives
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_x, g_y, g_qx, g_qy, g_p):
        x, y, targets = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[:2]
        dx = _owned_gradient(g_x, x) if need_x else None
        dy = _owned_gradient(g_y, y) if need_y else None
        # Path 2: d|x_i|^2 / dx_i = 2 x_i. The fp32 coefficient makes addcmul_ run in fp32
        # opmath and round once into a bf16/fp16 gradient.
        if dx is not None and g_qx is not None:
            dx.addcmul_(x, (2.0 * g_qx).unsqueeze(1))
        if dy is not None and g_qy is not None:
            dy.addcmul_(y, (2.0 * g_qy).unsqueeze(1))
        # Path 3: the positive pairs (x_i, y_{t_i}).
        if ctx.with_positives and g_p is not None:
            _add_positive_grads(dx, dy, x, y, targets, g_p)
        return dx, dy, None, None


def _add_positive_grads(dx, dy, x, y, targets, g_p):
    """dx_i += g_p_i y_{t_i} and dy_{t_i} += g_p_i x_i, in place, in row chunks."""
    g = g_p.unsqueeze(1)
    n = x.shape[0]
    if targets is None:  # t_i = i: both updates are plain row-aligned addcmul_
        if dx is not None:
            dx.addcmul_(y[:n], g)
        if dy is not None:
            dy[:n].addcmul_(x, g)
        return
    for start, stop in _row_chunks(n, x.shape[1]):
        g_rows = g[start:stop]
        if dx is not None:
            dx[start:stop].addcmul_(y[targets[start:stop]], g_rows)
        if dy is not None:  # several rows may share a target: index_add_ sums them
            contrib = (x[start:stop].to(g.dtype) * g_rows).to(dy.dtype)
            dy.index_add_(0, targets[start:stop], contrib)


def feature_stats(x, y, targets=None, with_positives=False):
    """(x', y', |x_i|^2 [N], |y_j|^2 [M], <x_i, y_{t_i}> [N] or empty) as one autograd node.

    Use x', y' (aliases of x, y) wherever the features enter the graph, so that all O(N d)
    gradient terms meet in this node's backward. Invariant: x' and y' are consumed only by
    flashnce's own ops (kernels, gathers, ``rowwise_dot``), whose gradients are fresh tensors
    or views; the backward adds into a contiguous non-view gradient in place, which would be
    wrong for a tensor that autograd also hands to some other input.
    """
    return _FeatureStats.apply(x, y, targets, with_positives)
