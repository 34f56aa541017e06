"""Softmax against class centres with a margin on the positive (ArcFace, CosFace).

``margin_softmax(x, centres, labels)`` is the face-recognition loss: x [N, d] embeddings
against C class centres [C, d], one-way, row i's positive the column labels[i], every other
centre a negative (a full softmax: no sampling), memory O((N + C) d). It is one-way
``flashnce.infonce`` with targets = labels and the margin of ``flashnce.core.margin`` on the
positive. With ``group=``, the centres are sharded across ranks (``flashnce.class_shards``).
"""

from __future__ import annotations

import torch

from .class_shards import sharded_margin_softmax
from .core.margin import DEFAULT_MARGINS, check_margin
from .core.numerics import MAX_RADIUS
from .losses import infonce
from .validate import autocast_off, check_class_labels


@autocast_off
def margin_softmax(x, centres, labels, *, margin_type="arcface", scale=64.0, margin=None,
                   geometry="cosine", curvature=1.0, on_manifold=False, reduction="mean",
                   backend="auto", group=None, max_radius=MAX_RADIUS):
    """ArcFace / CosFace softmax of embeddings against class centres, no N x C logits.

    x [N, d], centres [C, d] (same dtype), labels [N] integer class ids in [0, C):

        L_i = -log( e^{l'_i} / (e^{l'_i} + sum_{c != y_i} e^{s h(x_i, w_c)}) )
            = softplus(lse_{c != y_i} s h(x_i, w_c) - l'_i)

    with l'_i the margin logit of the positive (``flashnce.core.margin``): ArcFace s cos(theta + m)
    (defaults s = 64, m = 0.5), CosFace s (cos theta - m) (m = 0.35). The kernel walks the N x C
    pairs with each row's (i, y_i) skipped; the positive is merged in O(N).

    Args:
        margin_type: "arcface" (cosine geometry) or "cosface" (any geometry: h - m).
        scale: s (float or 1-element tensor; a tensor requiring grad gets one).
        margin: m; None picks the type's default (0.5 rad / 0.35).
        geometry, curvature, on_manifold, backend, max_radius: as for ``flashnce.infonce``.
        reduction: "mean" (default), "sum" or "none" ([N]).
        group: a torch.distributed ProcessGroup for model-parallel classes: each rank passes
            its local rows x_r, their global labels, and its shard of the centres (rank r
            holds classes [offset_r, offset_r + C_r), offsets in rank order); see
            ``flashnce.class_shards`` for the gradient convention.

    Returns fp32 (float64 for float64 inputs). Memory O((N + C) d) (saved: x, centres, the
    per-row statistics).
    """
    if margin is None:
        margin = DEFAULT_MARGINS.get(margin_type, 0.0)
    if group is not None:
        return sharded_margin_softmax(
            x, centres, labels, group=group, margin_type=margin_type, scale=scale,
            margin=margin, geometry=geometry, curvature=curvature, on_manifold=on_manifold,
            reduction=reduction, backend=backend, max_radius=max_radius)
    check_margin(margin, margin_type, geometry, allow_zero=False)
    if not isinstance(x, torch.Tensor) or not isinstance(centres, torch.Tensor):
        raise TypeError(f"x and centres must be tensors, got {type(x).__name__} and "
                        f"{type(centres).__name__}")
    if x.dim() != 2 or centres.dim() != 2:
        raise ValueError(f"x must be [N, d] and centres [C, d], got shapes {tuple(x.shape)} "
                         f"and {tuple(centres.shape)}")
    lab = check_class_labels(labels, x.shape[0], centres.shape[0], x.device)
    return infonce(x, centres, geometry=geometry, scale=scale, curvature=curvature,
                   on_manifold=on_manifold, symmetric=False, targets=lab, margin=margin,
                   margin_type=margin_type, reduction=reduction, backend=backend,
                   max_radius=max_radius)
