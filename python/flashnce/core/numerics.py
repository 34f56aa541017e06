"""Numerics constants and dtype rules shared by every layer (imports only torch).

* Epilogue, statistics and saved state run in the *compute dtype*: float64 for float64
  inputs, float32 otherwise (bf16 / fp16 products accumulate in fp32).
* ``clamp_kappa``: the relative floor of the distance clamps (euclidean D >= kappa (a + b),
  hyperbolic w >= kappa S_i S_j). It sits just above the fp32 (or fp64) rounding of a
  GEMM-built distance, so coincident points get finite, exactly-zero gradients.
* ``MAX_RADIUS``: the default cap of the hyperbolic radius rho (a ``max_radius`` parameter of
  the losses), ``MAX_RADIUS_LIMIT`` the largest allowed: the fp32 L3 epilogue forms
  S_i S_j = sinh rho_i sinh rho_j and w + q ~ 2 S_i S_j, finite up to rho ~ 44.3
  (docs/NUMERICS.md section 6 says what angular resolution remains at large radii).
* ``NORM_EPS``: the norm floor of directions (``F.normalize``'s eps): a zero feature maps to
  the origin / has cosine 0 with everything.
"""

from __future__ import annotations


import torch

MAX_RADIUS = 40.0
MAX_RADIUS_LIMIT = 44.0
NORM_EPS = 1e-12


def clamp_kappa(dtype: torch.dtype) -> float:
    """kappa of the distance clamps: 1e-14 for float64 math, 1e-6 for fp32 accumulation."""
    return 1e-14 if dtype == torch.float64 else 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Epilogue, reductions and saved statistics run in fp32 (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
