"""flashnce: memory-linear fused contrastive losses in every geometry.

Public API:
    infonce(x, y, *, geometry, scale, curvature, ...)   symmetric / one-way InfoNCE (CLIP)
    pairwise_lse(x, y, *, geometry, ...)                 the row/column log-sum-exp primitive
    explain_backends(x, y, geometry=...)                 why each backend would refuse x, y
    GEOMETRIES                                           the geometry registry
    nn.ContrastiveLoss, nn.ClipLoss                      modules (learnable scale/curvature)
    infonce(..., group=pg)                               torch.distributed, exact gradients
"""

from .geometry import GEOMETRIES, get_geometry
from .losses import explain_backends, infonce, pairwise_lse
from . import distributed, nn
from .nn import ClipLoss, ContrastiveLoss
from .reference import reference_infonce, reference_logits, reference_pairwise_lse

__version__ = "0.1.0"

__all__ = [
    "ClipLoss",
    "ContrastiveLoss",
    "GEOMETRIES",
    "explain_backends",
    "get_geometry",
    "infonce",
    "pairwise_lse",
    "reference_infonce",
    "reference_logits",
    "reference_pairwise_lse",
    "distributed",
    "nn",
    "__version__",
]
