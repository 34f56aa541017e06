"""flashnce.retrieval_metrics: exact ranks, recall@K and mean / median rank, both directions.

The oracle is written here, independently of the op: the float64 materialised logits
(``flashnce.reference_logits``) sorted per row by (decreasing logit, increasing index) -- a
stable sort of -l -- and the rank of a query is the position of its first positive in that
order (every entry before it is a negative). That is the rule of LOSSES.md 2.4 (the best
positive, ties with a negative broken by index). Checked on every backend that declares the
``count`` statistic (generated from the declarations), every geometry, fp32 / fp64 (and bf16
where declared), paired and grouped, with exact ties from duplicated rows on both sides, N != M,
N = 1, several tiles; against open_clip's argsort ranks and metrics and clip_benchmark's
recall@K written out on tie-free data; and bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flashnce
from flashnce import dispatch

GEOMETRIES = ("cosine", "dot", "sqeuclidean", "euclidean", "poincare", "lorentz")
CURVATURE = 0.7


def _count_backends():
    out = []
    for name, b in dispatch.BACKENDS.items():
        if "count" not in b.stats:
            continue
        why = b.unavailable()
        if why is None and b.devices is not None and "cpu" not in b.devices:
            why = "runs on other devices only"
        out.append(pytest.param(name, marks=pytest.mark.skip(
            reason=f"backend {name!r} unavailable: {why}")) if why else name)
    return out


BACKENDS = _count_backends()


def _features(n, d, seed, dtype=torch.float64, scale=None):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (t * (scale if scale is not None else d ** -0.5)).to(dtype)


def oracle_ranks(logits, positive):
    """0-based rank of each row's best positive: position of the first positive in the row
    sorted by (-l, j); -1 without a positive."""
    order = torch.sort(-logits, dim=1, stable=True).indices
    pos_sorted = positive.gather(1, order)
    rank = pos_sorted.to(torch.int64).argmax(1)
    return torch.where(positive.any(1), rank, -1)


def oracle(x, y, geometry, x_groups=None, y_groups=None):
    """(x -> y ranks [N], y -> x ranks [M]) from the float64 materialised logits."""
    logits = flashnce.reference_logits(x.double(), y.double(), geometry=geometry,
                                       curvature=CURVATURE)
    if x_groups is None:
        positive = torch.eye(x.shape[0], y.shape[0], dtype=torch.bool)
    else:
        positive = x_groups[:, None] == y_groups[None, :]
    return oracle_ranks(logits, positive), oracle_ranks(logits.T, positive.T)


def _metrics(x, y, geometry, backend, ks=(1,), **groups):
    return flashnce.retrieval_metrics(x, y, geometry=geometry, ks=ks, curvature=CURVATURE,
                                      backend=backend, **groups)


def _check(res, x, y, geometry, x_groups=None, y_groups=None):
    want_x, want_y = oracle(x, y, geometry, x_groups, y_groups)
    assert res.x_to_y_ranks.dtype == torch.int64 and res.y_to_x_ranks.dtype == torch.int64
    assert torch.equal(res.x_to_y_ranks, want_x), (res.x_to_y_ranks, want_x)
    assert torch.equal(res.y_to_x_ranks, want_y), (res.y_to_x_ranks, want_y)


def _dtypes(backend):
    b = dispatch.BACKENDS[backend]
    return [d for d in (torch.float64, torch.float32, torch.bfloat16) if d in b.dtypes]


def _with_duplicates(x, y):
    """Exact ties: y has duplicated rows (a negative equal to a positive, on both sides of
    it by index) and x too (ties in the columns)."""
    x, y = x.clone(), y.clone()
    y[5] = y[2]   # row 2's positive tied with a later column: no effect on rank 2
    y[1] = y[4]   # row 4's positive tied with an earlier column: counts
    x[6] = x[3]   # the same for the columns
    x[0] = x[7]
    return x, y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_paired_matches_oracle(backend, geometry):
    for dtype in _dtypes(backend):
        x = _features(37, 8, 0)
        y = (x + 0.9 * _features(37, 8, 1)).to(dtype)
        x = x.to(dtype)
        _check(_metrics(x, y, geometry, backend), x, y, geometry)
        xd, yd = _with_duplicates(x, y)
        res = _metrics(xd, yd, geometry, backend)
        _check(res, xd, yd, geometry)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_grouped_matches_oracle(backend, geometry):
    """COCO-style: 23 images, 61 captions (2 or 3 per image), duplicated captions."""
    gy = torch.cat([torch.arange(23), torch.arange(23), torch.arange(15)])
    gy = gy[torch.randperm(61, generator=torch.Generator().manual_seed(3))]
    gx = torch.arange(23)
    for dtype in _dtypes(backend):
        x = _features(23, 8, 4)
        y = x[gy] + 1.2 * _features(61, 8, 5)
        y[10] = y[40]  # a duplicated caption (same image or not)
        x, y = x.to(dtype), y.to(dtype)
        _check(_metrics(x, y, geometry, backend, x_groups=gx, y_groups=gy), x, y, geometry,
               gx, gy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_by_index(backend):
    """The tie rule itself, on integer features (every logit exact in every dtype): a
    negative equal to the best positive counts iff its index is smaller."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # all of row 0's logits equal
    for dtype in _dtypes(backend):
        res = _metrics(x.to(dtype), y.to(dtype), "dot", backend)
        # row 0: l = (1, 1, 1), positive 0 -> 0; row 1: (0, 0, 0), positive 1 -> 1;
        # row 2: (1, 1, 1), positive 2 -> 2.
        assert res.x_to_y_ranks.tolist() == [0, 1, 2]
        # columns: every column is (1, 0, 1): col 0 -> 0; col 1 (pos l=0) -> 2; col 2 -> 1.
        assert res.y_to_x_ranks.tolist() == [0, 2, 1]
        # grouped: the best of several positives, the smallest index among tied positives.
        res = _metrics(x.to(dtype), y.to(dtype), "dot", backend,
                       x_groups=torch.tensor([0, 1, 1]), y_groups=torch.tensor([1, 0, 1]))
        # row 0 (group 0): positive col 1, tied negative col 0 before it -> 1; rows 1, 2:
        # positives cols 0, 2 (t = 0), the tied negative col 1 comes after -> 0.
        assert res.x_to_y_ranks.tolist() == [1, 0, 0]
        # col 0 (group 1): positives rows 1 (l 0), 2 (l 1): best is row 2, the tied negative
        # row 0 comes first -> 1; col 1 (group 0): row 0 -> 0; col 2 as col 0 -> 1.
        assert res.y_to_x_ranks.tolist() == [1, 0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_and_several_tiles(backend):
    x = _features(1, 4, 6)
    res = _metrics(x, _features(1, 4, 7), "cosine", backend)
    assert res.x_to_y_ranks.tolist() == [0] and res.y_to_x_recall == {1: 1.0}
    assert res.x_to_y_mean_rank == 1.0 and res.y_to_x_median_rank == 1.0
    # N = 1 against many captions of its group and others.
    y = _features(9, 4, 8)
    res = _metrics(x, y, "euclidean", backend, x_groups=torch.tensor([2]),
                   y_groups=torch.tensor([2, 2, 2, 2, 2, 2, 2, 2, 2]))
    _check(res, x, y, "euclidean", torch.tensor([2]), torch.full((9,), 2))
    # Several row and column tiles of every backend (torch: 512, cpu: 256 x 512), fp32.
    n, m = 600, 1100
    gy = torch.arange(m) % n
    xs = _features(n, 8, 9, torch.float32)
    ys = (xs.double()[gy] + 2.0 * _features(m, 8, 10)).float()
    ys[700] = ys[3]
    _check(_metrics(xs, ys, "cosine", backend, x_groups=torch.arange(n), y_groups=gy), xs, ys,
           "cosine", torch.arange(n), gy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_open_clip_and_clip_benchmark(backend):
    """Tie-free data: open_clip's get_clip_metrics (argsort ranks, mean rank + 1, floor of
    numpy's median + 1, recall = mean(rank < k)) and clip_benchmark's COCO recall@K (a query
    is a hit when any positive is among its top K by topk), written out here."""
    ks = (1, 5, 10)
    x = _features(64, 16, 11, torch.float32)
    y = (x.double() + 1.1 * _features(64, 16, 12)).float()
    res = flashnce.retrieval_metrics(x, y, ks=ks, backend=backend)
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    yn = torch.nn.functional.normalize(y.double(), dim=-1)
    logits = xn @ yn.T
    truth = torch.arange(64).view(-1, 1)
    for name, lg, ranks, recall, mean_rank, median_rank in (
            ("image_to_text", logits, res.x_to_y_ranks, res.x_to_y_recall,
             res.x_to_y_mean_rank, res.x_to_y_median_rank),
            ("text_to_image", logits.T, res.y_to_x_ranks, res.y_to_x_recall,
             res.y_to_x_mean_rank, res.y_to_x_median_rank)):
        preds = torch.where(torch.argsort(lg, descending=True) == truth)[1].numpy()
        assert ranks.tolist() == preds.tolist(), name
        assert mean_rank == pytest.approx(preds.mean() + 1, abs=1e-12)
        assert median_rank == np.floor(np.median(preds)) + 1
        assert recall == {k: pytest.approx(np.mean(preds < k), abs=1e-12) for k in ks}
    # Grouped (COCO): captions [M] x images [N] scores, positive matrix, topk hits.
    gy = torch.arange(96) % 32
    xi = _features(32, 16, 13, torch.float32)
    yt = (xi.double()[gy] + 1.3 * _features(96, 16, 14)).float()
    res = flashnce.retrieval_metrics(xi, yt, ks=ks, x_groups=torch.arange(32), y_groups=gy,
                                     backend=backend)
    scores = (torch.nn.functional.normalize(yt.double(), dim=-1)
              @ torch.nn.functional.normalize(xi.double(), dim=-1).T)  # texts x images
    positive = gy[:, None] == torch.arange(32)[None, :]
    for k in ks:
        def hits(s, p):
            top = torch.topk(s, k, dim=1).indices
            return (p.gather(1, top).sum(1) > 0).double().mean().item()
        assert res.y_to_x_recall[k] == pytest.approx(hits(scores, positive), abs=1e-12)
        assert res.x_to_y_recall[k] == pytest.approx(hits(scores.T, positive.T), abs=1e-12)


def test_no_gradient_inputs_untouched():
    x = _features(12, 4, 15, torch.float32).requires_grad_()
    y = _features(12, 4, 16, torch.float32)
    x0, y0 = x.detach().clone(), y.clone()
    res = flashnce.retrieval_metrics(x, y, ks=(1, 3))
    assert not res.x_to_y_ranks.requires_grad and x.grad is None
    assert torch.equal(x.detach(), x0) and torch.equal(y, y0)
    with pytest.raises(Exception):
        res.x_to_y_mean_rank = 0.0  # frozen


def test_summary_values():
    """recall, mean and median from the ranks (even count: numpy's median, floored)."""
    x = torch.eye(4)
    y = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 1.0]])
    res = flashnce.retrieval_metrics(x, y, geometry="dot", ks=(1, 2))
    # rows: (1,1,0,0) pos 0 -> 0; (0,0,0,0) pos 1 -> 1; (0,0,0,0) pos 2 -> 2; (0,0,1,1) -> 1
    assert res.x_to_y_ranks.tolist() == [0, 1, 2, 1]
    assert res.x_to_y_recall == {1: 0.25, 2: 0.75}
    assert res.x_to_y_mean_rank == 2.0 and res.x_to_y_median_rank == 2.0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ks=(0,)), ValueError, "ks must be positive"),
    (dict(ks=(7,)), ValueError, "exceeds the number of candidates"),
    (dict(ks=(1.0,)), TypeError, "ks must hold ints"),
    (dict(ks=(True,)), TypeError, "ks must hold ints"),
    (dict(ks=()), TypeError, "ks must be a non-empty"),
    (dict(ks="1"), TypeError, "ks must be a non-empty"),
    (dict(x_groups=torch.arange(6)), ValueError, "pass both x_groups"),
    (dict(x_groups=torch.arange(5), y_groups=torch.arange(6)), ValueError,
     r"x_groups must have shape \(6,\)"),
    (dict(x_groups=torch.arange(6).float(), y_groups=torch.arange(6)), TypeError,
     "x_groups must have an integer dtype"),
    (dict(x_groups=torch.arange(6), y_groups=torch.arange(6) > 2), TypeError,
     "y_groups must have an integer dtype"),
    (dict(x_groups=torch.arange(6), y_groups=torch.tensor([0, 1, 2, 3, 4, 4])), ValueError,
     r"x_groups\[5\] = 5 matches no y row"),
    (dict(x_groups=torch.tensor([0, 1, 2, 3, 4, 4]), y_groups=torch.arange(6)), ValueError,
     r"y_groups\[5\] = 5 matches no x row"),
    (dict(x_groups=torch.arange(6), y_groups=torch.arange(6).to("meta")), ValueError,
     "y_groups are on meta"),
    (dict(geometry="cosin"), ValueError, "cosin"),
    (dict(backend="triton"), ValueError, "statistic 'count' not implemented"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
])
def test_bad_inputs(kwargs, error, match):
    x = _features(6, 4, 17, torch.float32)
    with pytest.raises(error, match=match):
        flashnce.retrieval_metrics(x, x + 1, **{"ks": (1,), **kwargs})


def test_bad_features():
    x = _features(6, 4, 18, torch.float32)
    with pytest.raises(ValueError, match="same feature dim"):
        flashnce.retrieval_metrics(x, _features(6, 5, 19, torch.float32), ks=(1,))
    with pytest.raises(ValueError, match="needs N == M"):
        flashnce.retrieval_metrics(x, _features(7, 4, 19, torch.float32), ks=(1,))
    with pytest.raises(TypeError, match="same dtype"):
        flashnce.retrieval_metrics(x, x.double(), ks=(1,))


def test_count_size_limit_refused():
    """fp32 ranks are exact below 2**24: larger batches are refused with the reason (the
    check reads shapes only, so meta tensors suffice)."""
    from flashnce.backends.base import TileSpec, count_size_reasons
    from flashnce.core.relation import Relation

    big = torch.empty(2**24, 4, device="meta")
    tspec = TileSpec("cosine", "count", Relation.diagonal(), 1e-6)
    assert any("2**24" in r for r in count_size_reasons(big, big[:3], tspec))
    assert count_size_reasons(big.double(), big[:3].double(), tspec) == []
    assert count_size_reasons(big[:3], big[:3], tspec) == []
