"""flashnce: memory-linear fused contrastive losses in every geometry.

Public API:
    infonce(x, y, *, geometry, scale, curvature, ...)   symmetric / one-way InfoNCE (CLIP)
    pairwise_lse(x, y, *, geometry, ...)                 the row/column log-sum-exp primitive
    GEOMETRIES                                           the geometry registry
"""

from .geometry import GEOMETRIES, get_geometry
from .losses import infonce, pairwise_lse
from .reference import reference_infonce, reference_logits, reference_pairwise_lse

__version__ = "0.1.0"

__all__ = [
    "GEOMETRIES",
    "get_geometry",
    "infonce",
    "pairwise_lse",
    "reference_infonce",
    "reference_logits",
    "reference_pairwise_lse",
    "__version__",
]
