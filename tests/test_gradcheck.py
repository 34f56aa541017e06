"""float64 gradcheck of the pairwise-LSE primitive for every geometry (torch backend)."""

import pytest
import torch

import flashnce

from _helpers import GEOMETRY_NAMES, make_features


@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("exclude_diagonal", [False, True])
def test_pairwise_lse_gradcheck(geometry, exclude_diagonal):
    x = make_features(5, 3, dtype=torch.float64, seed=11, geometry=geometry).requires_grad_()
    y = make_features(4, 3, dtype=torch.float64, seed=12, geometry=geometry,
                      role="y").requires_grad_()
    scale = torch.tensor(1.9, dtype=torch.float64, requires_grad=True)
    curv = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    hyperbolic = flashnce.GEOMETRIES[geometry].kind == "hyperbolic"

    def fn(x, y, scale, curv):
        return flashnce.pairwise_lse(x, y, geometry=geometry, scale=scale,
                                     curvature=curv if hyperbolic else 1.0,
                                     exclude_diagonal=exclude_diagonal, backend="torch")

    assert torch.autograd.gradcheck(fn, (x, y, scale, curv), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
def test_infonce_gradcheck(geometry):
    x = make_features(6, 4, dtype=torch.float64, seed=21, geometry=geometry).requires_grad_()
    y = make_features(6, 4, dtype=torch.float64, seed=22, geometry=geometry,
                      role="y").requires_grad_()
    scale = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)

    def fn(x, y, scale):
        return flashnce.infonce(x, y, geometry=geometry, scale=scale, curvature=1.4,
                                backend="torch")

    assert torch.autograd.gradcheck(fn, (x, y, scale), eps=1e-6, atol=1e-8, rtol=1e-6)
