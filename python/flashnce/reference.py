"""Materialised pure-PyTorch implementation: the test oracle (and the ``reference`` backend).

It builds the full N x M logit matrix from the textbook formulas, deliberately *not* from the
kernels' L3 / law-of-cosines forms, so that comparing the two checks the algebra:

* sqeuclidean / euclidean: ``|x_i - y_j|`` from the N x M x d difference tensor;
* lorentz: explicit hyperboloid points (MERU ``exp_map0``), ``z = c (t t' - <u, u'>)``,
  ``d = arcosh(z) / sqrt(c)``;
* poincare: explicit ball points (``expmap0``) and the arcosh form of the Mobius distance.

Gradients come from autograd. Memory is O(N M d): use it for tests and small batches only.
Run it in float64 to get the oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core.numerics import MAX_RADIUS, NORM_EPS
from .geometry import get_geometry


def _as_tensor(v, like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(like.dtype)
    return torch.tensor(float(v), dtype=like.dtype, device=like.device)


def _lorentz_points(v, c, on_manifold, max_radius=MAX_RADIUS):
    """Space components u of points on the hyperboloid (t is implied by u)."""
    if on_manifold:
        u = v
        rho = torch.asinh(c.sqrt() * u.norm(dim=-1, keepdim=True))
    else:
        rho = c.sqrt() * v.norm(dim=-1, keepdim=True)
    rho = rho.clamp(max=max_radius)
    direction = F.normalize(v, dim=-1, eps=NORM_EPS)
    return torch.sinh(rho) / c.sqrt() * direction


def _poincare_points(v, c, on_manifold, max_radius=MAX_RADIUS):
    if on_manifold:
        r = 2.0 * torch.atanh(c.sqrt() * v.norm(dim=-1, keepdim=True))
    else:
        r = 2.0 * c.sqrt() * v.norm(dim=-1, keepdim=True)
    r = r.clamp(max=max_radius)
    direction = F.normalize(v, dim=-1, eps=NORM_EPS)
    return torch.tanh(0.5 * r) / c.sqrt() * direction


def reference_logits(x, y, *, geometry="cosine", scale=1.0, curvature=1.0, on_manifold=False,
                     max_radius=MAX_RADIUS):
    """The full [N, M] logit matrix in the dtype of x (use float64 for the oracle)."""
    geo = get_geometry(geometry)
    s = _as_tensor(scale, x)
    c = _as_tensor(curvature, x)
    if geo.name == "cosine":
        return s * F.normalize(x, dim=-1, eps=NORM_EPS) @ F.normalize(y, dim=-1, eps=NORM_EPS).T
    if geo.name == "dot":
        return s * x @ y.T
    if geo.name in ("sqeuclidean", "euclidean"):
        dist2 = (x[:, None, :] - y[None, :, :]).square().sum(-1)
        return -s * (dist2 if geo.name == "sqeuclidean" else dist2.sqrt())
    if geo.name == "lorentz":
        u = _lorentz_points(x, c, on_manifold, max_radius)
        w = _lorentz_points(y, c, on_manifold, max_radius)
        t_u = torch.sqrt(1.0 / c + u.square().sum(-1))
        t_w = torch.sqrt(1.0 / c + w.square().sum(-1))
        z = c * (t_u[:, None] * t_w[None, :] - u @ w.T)
        return -s * torch.acosh(z.clamp_min(1.0)) / c.sqrt()
    if geo.name == "poincare":
        a = _poincare_points(x, c, on_manifold, max_radius)
        b = _poincare_points(y, c, on_manifold, max_radius)
        dist2 = (a[:, None, :] - b[None, :, :]).square().sum(-1)
        den = (1.0 - c * a.square().sum(-1))[:, None] * (1.0 - c * b.square().sum(-1))[None, :]
        return -s * torch.acosh(1.0 + 2.0 * c * dist2 / den) / c.sqrt()
    raise AssertionError(geo.name)


def reference_pairwise_lse(x, y, *, exclude_diagonal=False, **geometry_kwargs):
    """(row_lse [N], col_lse [M]) of the materialised logits."""
    logits = reference_logits(x, y, **geometry_kwargs)
    if exclude_diagonal:
        k = min(logits.shape)
        idx = torch.arange(k, device=logits.device)
        logits = logits.index_put((idx, idx), logits.new_tensor(float("-inf")))
    return torch.logsumexp(logits, dim=1), torch.logsumexp(logits, dim=0)


def reference_infonce(
    x, y, *, symmetric=True, targets=None, reduction="mean", **geometry_kwargs
):
    """InfoNCE via ``F.cross_entropy`` on the materialised logits (see ``flashnce.infonce``)."""
    logits = reference_logits(x, y, **geometry_kwargs)
    n = logits.shape[0]
    if symmetric:
        labels = torch.arange(n, device=logits.device)
        per_row = 0.5 * (
            F.cross_entropy(logits, labels, reduction="none")
            + F.cross_entropy(logits.T, labels, reduction="none")
        )
    else:
        labels = torch.arange(n, device=logits.device) if targets is None else targets
        per_row = F.cross_entropy(logits, labels, reduction="none")
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


def reference_siglip(x, y, *, scale, bias, labels=None, reduction="mean", **geometry_kwargs):
    """SigLIP via ``F.logsigmoid`` on the materialised logits (see ``flashnce.siglip``):
    l = scale * h + bias, z = +1 on positives (the diagonal, or equal labels), -1 elsewhere;
    per row sum_j -log sigmoid(z_ij l_ij)."""
    logits = reference_logits(x, y, scale=scale, **geometry_kwargs) + bias
    n, m = logits.shape
    if labels is None:
        positive = torch.eye(n, m, dtype=torch.bool, device=logits.device)
    else:
        a, b = labels if isinstance(labels, (tuple, list)) else (labels, labels)
        positive = a[:, None] == b[None, :]
    z = positive.to(logits.dtype) * 2 - 1
    per_row = -F.logsigmoid(z * logits).sum(1)
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row


def _reduce(per_row, reduction, keep=None):
    """mean (over the rows in ``keep``, 0 when none), sum, or none."""
    if reduction == "mean":
        if keep is None:
            return per_row.mean()
        return per_row[keep].sum() / max(int(keep.sum()), 1)
    return per_row.sum() if reduction == "sum" else per_row


def reference_supcon(embeddings, labels, *, temperature=0.1, variant="out", reduction="mean",
                     **geometry_kwargs):
    """SupCon on the materialised logits l = h / temperature (see ``flashnce.supcon``): self
    pairs masked, P(i) = same label; "out": lse - mean_P l, "in": lse - log mean_P exp l; rows
    without a positive give 0 and are left out of the mean."""
    logits = reference_logits(embeddings, embeddings, scale=1.0 / temperature,
                              **geometry_kwargs)
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    count = positive.sum(1)
    lse = torch.logsumexp(logits.masked_fill(eye, float("-inf")), 1)
    if variant == "out":
        pos_term = torch.where(positive, logits, 0.0).sum(1) / count.clamp_min(1).to(lse.dtype)
    else:
        lse_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)
        pos_term = torch.where(count > 0, lse_pos, 0.0) - count.clamp_min(1).to(lse.dtype).log()
    per_row = torch.where(count > 0, lse - pos_term, 0.0)
    return _reduce(per_row, reduction, count > 0)


def reference_ntxent(z1, z2, *, temperature=0.5, denominator="all", reduction="mean",
                     **geometry_kwargs):
    """NT-Xent on the materialised [2N, 2N] logits (see ``flashnce.ntxent``)."""
    z = torch.cat([z1, z2])
    logits = reference_logits(z, z, scale=1.0 / temperature, **geometry_kwargs)
    n2 = logits.shape[0]
    idx = torch.arange(n2, device=logits.device)
    partner = (idx + n2 // 2) % n2
    drop = idx[:, None] == idx[None, :]
    if denominator == "negatives":
        drop = drop | (idx[None, :] == partner[:, None])
    lse = torch.logsumexp(logits.masked_fill(drop, float("-inf")), 1)
    per_row = lse - logits[idx, partner]
    return _reduce(per_row, reduction)


def reference_uniformity(x, *, t=2.0, normalize=True, **geometry_kwargs):
    """log mean_{i != j} exp(t h_ij) on the materialised matrix (``flashnce.uniformity``)."""
    if normalize:
        x = F.normalize(x, dim=-1)
    logits = reference_logits(x, x, scale=t, **geometry_kwargs)
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    return torch.logsumexp(logits.masked_fill(eye, float("-inf")).reshape(-1), 0) - math.log(
        n * (n - 1))


def reference_margin_softmax(x, centres, labels, *, margin_type="arcface", scale=64.0,
                             margin=None, reduction="mean", **geometry_kwargs):
    """ArcFace / CosFace via ``F.cross_entropy`` on the materialised [N, C] logits, the target
    logit replaced as insightface writes it (see ``flashnce.margin_softmax``): ArcFace
    s cos(acos(c) + m) with c = clamp(cos, +-(1 - 1e-6)), or s (c - m sin m) where
    acos(c) + m > pi; CosFace s (h - m)."""
    if margin is None:
        margin = {"arcface": 0.5, "cosface": 0.35}[margin_type]
    h = reference_logits(x, centres, scale=1.0, **geometry_kwargs)
    rows = torch.arange(h.shape[0], device=h.device)
    target = h[rows, labels]
    if margin_type == "arcface":
        c = target.clamp(-1 + 1e-6, 1 - 1e-6)
        theta = torch.acos(c)
        target = torch.where(theta + margin <= math.pi, torch.cos(theta + margin),
                             c - margin * math.sin(margin))
    else:
        target = target - margin
    s = _as_tensor(scale, h)
    logits = (s * h).index_put((rows, labels), s * target)
    per_row = F.cross_entropy(logits, labels, reduction="none")
    return _reduce(per_row, reduction)
