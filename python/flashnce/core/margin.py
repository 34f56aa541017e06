"""Margins on the positive logit (CosFace, ArcFace): h -> h' on the O(N) side, never in a kernel.

The walk skips every positive pair and returns the log-sum-exp over the negatives; the
positive enters each row's loss in O(N), as softplus(lse_neg - l'_i) = lse - l'_i
(``flashnce.core.problem.per_row_losses``). A margin is therefore only a change of the
positive's logit l'_i = scale * h'_i + bias:

* CosFace (Wang et al. 2018):  h' = h - m                   (m = 0.35, scale 64)
  with h the geometry's similarity (the cosine, or minus a distance: any geometry);
* ArcFace (Deng et al. 2019):  h' = cos(theta + m)          (m = 0.5, scale 64)
  cosine geometry only, h = cos theta. cos(theta + m) = c cos m - sqrt(1 - c^2) sin m with
  c = clamp(h, -1 + 1e-6, 1 - 1e-6): its derivative cos m + sin m c / sqrt(1 - c^2) is
  unbounded as c -> 1, the clamp bounds it (zero gradient outside, the clamp convention of
  docs/NUMERICS.md). Where theta + m > pi (c < cos(pi - m)) cos(theta + m) would turn back
  up; as insightface does, h' continues linearly there: c - m sin m, so it stays monotone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..geometry import get_geometry
from ..validate import check_choice

MARGIN_TYPES = ("arcface", "cosface")
DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35}
COS_EPS = 1e-6  # cos theta is clamped to [-1 + eps, 1 - eps] before the angle is used


@dataclass(frozen=True)
class Margin:
    """h -> h' on the positive's similarity; the logit is scale * h' + bias."""

    kind: str
    m: float

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "cosface":
            return h - self.m
        c = h.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)
        sin_theta = torch.sqrt((1.0 - c) * (1.0 + c))  # >= ~1.4e-3 after the clamp
        phi = c * math.cos(self.m) - sin_theta * math.sin(self.m)
        # theta + m <= pi  <=>  c >= cos(pi - m) = -cos m; past it, the linear continuation.
        return torch.where(c >= -math.cos(self.m), phi, c - self.m * math.sin(self.m))


def check_margin(margin, margin_type: str, geometry: str, *, allow_zero: bool) -> Margin | None:
    """The margin as a ``Margin`` (None for a zero margin where ``allow_zero``).

    ArcFace needs an angle (geometry "cosine") and 0 < m < pi; CosFace takes any geometry and
    a finite m > 0 (in units of the similarity h)."""
    check_choice(margin_type, "margin_type", MARGIN_TYPES)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"margin must be a float, got {type(margin).__name__}")
    margin = float(margin)
    if allow_zero and margin == 0.0:
        return None
    if margin_type == "arcface":
        if not 0.0 < margin < math.pi:
            raise ValueError(f"an ArcFace margin is an angle in (0, pi) radians, got {margin}")
        if get_geometry(geometry).name != "cosine":
            raise ValueError(f"margin_type='arcface' adds an angle: it needs geometry='cosine', "
                             f"got {geometry!r} (use margin_type='cosface' for other "
                             f"geometries)")
    elif not (math.isfinite(margin) and margin > 0.0):
        raise ValueError(f"a CosFace margin must be a finite number > 0, got {margin}")
    return Margin(margin_type, margin)
