"""Public losses on the pairwise-LSE primitive: O(N d) PyTorch around the tile walk."""

from __future__ import annotations

import torch

from . import dispatch
from .backends.base import TileSpec
from .features import feature_stats, rowwise_dot
from .geometry import Prepared, clamp_kappa, get_geometry, paired_logits
from .ops import pairwise_lse_prepared
from .reference import reference_infonce, reference_pairwise_lse
from .validate import REDUCTIONS, as_param, check_ball, check_choice, check_features


class _Prepared:
    """Validated inputs after the geometry prologue (operands, per-row scalars, parameters).

    The features enter the autograd graph once, through ``feature_stats``: the operands are
    its aliases of x and y, the per-row scalars come from its squared norms, and with
    ``with_positives`` it also returns the positive-pair dots <x_i, y_{t_i}> (t = targets, or
    i), so every N x d gradient term is added in place into the kernel's dX / dY.
    """

    def __init__(self, x, y, geometry, scale, curvature, on_manifold, features_checked=False,
                 targets=None, with_positives=False):
        if not features_checked:  # the finite-value scan costs a host sync: do it once
            check_features(x, y)
        self.geo = get_geometry(geometry)
        if not isinstance(on_manifold, bool):
            raise TypeError(f"on_manifold must be a bool, got {type(on_manifold).__name__}")
        if on_manifold and not self.geo.supports_on_manifold:
            raise ValueError(
                f"on_manifold=True is only meaningful for hyperbolic geometries "
                f"(poincare, lorentz), not {self.geo.name!r}")
        self.scale = as_param(scale, "scale", x, positive=False)
        self.curvature = as_param(curvature, "curvature", x, positive=True)
        if on_manifold and self.geo.name == "poincare":
            check_ball(x, self.curvature, "x")
            check_ball(y, self.curvature, "y")
        self.raw = dict(geometry=geometry, scale=scale, curvature=curvature,
                        on_manifold=on_manifold)
        self.x, self.y = x, y
        x_op, y_op, q_x, q_y, self.positive_dots = feature_stats(
            x, y, targets, with_positives, self.geo.scale_invariant)
        self.targets = targets
        self.px = Prepared(x_op, self.geo.row_scalars(q_x, self.curvature, on_manifold))
        self.py = Prepared(y_op, self.geo.row_scalars(q_y, self.curvature, on_manifold))
        self.inv_sqrt_c = (self.curvature.rsqrt() if self.geo.uses_curvature
                           else torch.ones_like(self.curvature))
        self.kappa = clamp_kappa(x.dtype)

    def spec(self, exclude_diagonal: bool) -> TileSpec:
        return TileSpec(self.geo.kind, exclude_diagonal, self.kappa)

    def lse(self, impl, exclude_diagonal: bool):
        return pairwise_lse_prepared(
            self.px.operand, self.py.operand, self.px.scalars, self.py.scalars,
            self.scale, self.inv_sqrt_c, self.spec(exclude_diagonal), impl)

    def positive_logits(self):
        """logit(x_i, y_{t_i}) for every row i (t = targets, or i when None), O(N).

        Needs ``with_positives=True``: the dots come from ``feature_stats``.
        """
        sy = self.py.scalars
        sy = sy[: self.px.scalars.shape[0]] if self.targets is None else sy[self.targets]
        return self._logits(self.positive_dots, self.px.scalars, sy)

    def logits_of_pairs(self, ex, ey, sx, sy):
        """logit(ex_i, ey_i) of operand rows paired elementwise, with their per-row scalars."""
        return self._logits(rowwise_dot(ex, ey), sx, sy)

    def _logits(self, p, sx, sy):
        return paired_logits(self.geo.kind, p, sx, sy, self.scale, self.inv_sqrt_c, self.kappa)


def per_row_losses(row_lse, col_lse, positive, symmetric: bool):
    """InfoNCE per row: 1/2 (row - pos) + 1/2 (col - pos) symmetric, else row - pos."""
    if symmetric:
        return 0.5 * (row_lse - positive) + 0.5 * (col_lse - positive)
    return row_lse - positive


def _reference_dtype(x):
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def pairwise_lse(x, y, *, geometry="cosine", scale=1.0, curvature=1.0, on_manifold=False,
                 exclude_diagonal=False, backend="auto"):
    """Row and column log-sum-exp of the pairwise logits, never materialising them.

    ``row_lse[i] = log sum_j exp l(x_i, y_j)`` and ``col_lse[j] = log sum_i exp l(x_i, y_j)``,
    with ``l`` the geometry's logit (see ``flashnce.GEOMETRIES``). ``exclude_diagonal`` drops
    the pairs i == j (same-set losses; needs at least 2 columns).

    Shapes: x [N, d], y [M, d] -> ([N], [M]) in fp32 (float64 for float64 inputs).
    Differentiable in x, y, and in scale / curvature when they are tensors requiring grad.
    """
    dispatch.check_backend_name(backend)
    if not isinstance(exclude_diagonal, bool):
        raise TypeError(f"exclude_diagonal must be a bool, got {type(exclude_diagonal).__name__}")
    prep = _Prepared(x, y, geometry, scale, curvature, on_manifold)
    if exclude_diagonal and y.shape[0] < 2:
        raise ValueError("exclude_diagonal=True needs at least 2 columns (y has 1 row): "
                         "every logit of the first row would be excluded")
    impl = dispatch.select_backend(backend, prep.px.operand, prep.py.operand,
                                   prep.spec(exclude_diagonal))
    if impl == "reference":
        return reference_pairwise_lse(_reference_dtype(x), _reference_dtype(y),
                                      exclude_diagonal=exclude_diagonal, **prep.raw)
    return prep.lse(impl, exclude_diagonal)


def infonce(x, y, *, geometry="cosine", scale=1.0, curvature=1.0, on_manifold=False,
            symmetric=True, targets=None, reduction="mean", backend="auto", group=None,
            group_mode="gather"):
    """InfoNCE / CLIP loss over pairwise logits in any geometry, memory O((N + M) d).

    symmetric=True (CLIP):  x [N, d], y [N, d]; positives are (x_i, y_i);
        L = 1/2 [CE(l, i -> i) + CE(l^T, j -> j)]
          = 1/(2N) sum_i (row_lse_i - l_ii) + 1/(2N) sum_j (col_lse_j - l_jj).
    symmetric=False:  x [N, d], y [M, d], only x -> y; ``targets`` [N] int64 column indices
        (default: i -> i, which needs N <= M); L = 1/N sum_i (row_lse_i - l_{i, t_i}).

    Args:
        geometry: "cosine", "dot", "sqeuclidean", "euclidean", "poincare", "lorentz".
        scale: logit scale s (float or 1-element tensor; a tensor requiring grad gets one).
        curvature: c > 0 of the hyperbolic geometries (float or tensor), ignored otherwise.
        on_manifold: hyperbolic only; inputs are points (ball points / hyperboloid space
            parts) instead of tangent vectors at the origin.
        reduction: "mean" (default), "sum", or "none" (per-row losses [N]).
        backend: "auto", "triton", "cuda", "cpu", "torch" or "reference" (materialised).
        group: a torch.distributed ProcessGroup: each rank passes its local rows (sizes may
            differ); the global batch is their concatenation in rank order (targets, if
            given, are global column indices). DDP convention: rank r returns
            (W / N) * sum of its rows' losses ("mean"), so the mean over ranks is the global
            loss, and gradients averaged over ranks (features through the model, scale,
            curvature) equal the single-process gradients (open_clip ClipLoss with
            local_loss=True, gather_with_grad=True). See ``flashnce.distributed``.
        group_mode: "gather" (all-gather columns, memory O(N d)) or "ring" (pass column
            blocks rank to rank, Inf-CL style, memory O(N_local d)).

    Returns the loss in fp32 (float64 for float64 inputs).
    """
    if group is not None:
        from .distributed import distributed_infonce
        return distributed_infonce(
            x, y, group=group, group_mode=group_mode, geometry=geometry, scale=scale,
            curvature=curvature, on_manifold=on_manifold, symmetric=symmetric,
            targets=targets, reduction=reduction, backend=backend)
    dispatch.check_backend_name(backend)
    check_choice(reduction, "reduction", REDUCTIONS)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    check_features(x, y)
    n, m = x.shape[0], y.shape[0]
    if symmetric:
        if targets is not None:
            raise ValueError("targets are only used with symmetric=False (symmetric InfoNCE "
                             "pairs x_i with y_i)")
        if n != m:
            raise ValueError(f"symmetric InfoNCE needs as many x rows as y rows, got {n} and "
                             f"{m} (use symmetric=False for one-way x -> y)")
    else:
        targets = _check_targets(targets, n, m, x.device)

    prep = _Prepared(x, y, geometry, scale, curvature, on_manifold, features_checked=True,
                     targets=targets, with_positives=True)
    impl = dispatch.select_backend(backend, prep.px.operand, prep.py.operand, prep.spec(False))
    if impl == "reference":
        return reference_infonce(_reference_dtype(x), _reference_dtype(y), symmetric=symmetric,
                                 targets=targets, reduction=reduction, **prep.raw)
    row_lse, col_lse = prep.lse(impl, False)
    positive = prep.positive_logits()
    per_row = per_row_losses(row_lse, col_lse, positive, symmetric)
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


def _check_targets(targets, n, m, device):
    if targets is None:
        if n > m:
            raise ValueError(f"without targets, row i's positive is column i, which needs "
                             f"N <= M; got N={n}, M={m}")
        return None
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a LongTensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64 (LongTensor), got {targets.dtype}")
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
    if targets.device != device:
        raise ValueError(f"targets are on {targets.device} but x is on {device}")
    if not torch.compiler.is_compiling() and n > 0:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= m:
            raise ValueError(f"targets must be column indices in [0, {m}), got range [{lo}, {hi}]")
    return targets
