"""InfoNCE's column options and its per-row numerics, on every backend that runs here.

* ``negatives=``: extra row-only columns (a MoCo queue without gradient, NegCLIP hard
  negatives with gradient) join the x -> y softmax only;
* ``exclude=`` (CSR) / ``exclude_labels=``: columns left out of a row's softmax, the target
  always kept;
* the loss per row is softplus(lse_neg - l_pos): never negative, and exact where the
  positive dominates (issue: lse - positive came out < 0, or -6 at large dot logits).

Oracle: the materialised float64 logits (``flashnce.reference_logits``) with the same masks.
"""

import pytest
import torch

import flashnce
from flashnce import dispatch

from _helpers import FP32_GRAD_RTOL, FP32_LOSS_RTOL, GEOMETRY_NAMES, assert_close, make_features
from _helpers import require_backend

CPU_BACKENDS = tuple(name for name, b in dispatch.BACKENDS.items()
                     if b.devices is None or "cpu" in b.devices)
TOL = {torch.float32: (FP32_LOSS_RTOL, FP32_GRAD_RTOL), torch.float64: (1e-10, 1e-9)}


def _skip_slow(backend, n):
    if backend == "triton" and n > 13:
        pytest.skip("triton: covered by the small shape (the interpreter is slow)")


def _dtype_for(backend):
    return torch.float32 if backend == "triton" else torch.float64


def _oracle_rows(x, y, extra, drop, targets, symmetric, geometry):
    """Per-row materialised losses: logits of [y; extra], ``drop`` [N, M] True = left out."""
    cols = y if extra is None else torch.cat([y, extra])
    logits = flashnce.reference_logits(x, cols, geometry=geometry, scale=2.0)
    n, m = x.shape[0], y.shape[0]
    t = torch.arange(n) if targets is None else targets
    pos = logits[torch.arange(n), t]
    mask = torch.zeros_like(logits, dtype=torch.bool)
    if drop is not None:
        mask[:, :m] = drop
    mask[torch.arange(n), t] = False
    row = torch.logsumexp(logits.masked_fill(mask, float("-inf")), 1) - pos
    if not symmetric:
        return row
    col = torch.logsumexp(logits[:, :m], 0) - pos
    return 0.5 * row + 0.5 * col


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,k", ((1, 3), (13, 7), (40, 65)))
@pytest.mark.parametrize("symmetric", (True, False))
@pytest.mark.parametrize("queue_grad", (False, True))
def test_extra_negative_columns(backend, geometry, n, k, symmetric, queue_grad):
    dtype = _dtype_for(backend)
    x = make_features(n, 5, dtype=dtype, geometry=geometry, seed=n)
    require_backend(backend, x)
    _skip_slow(backend, n)
    y = make_features(n, 5, dtype=dtype, geometry=geometry, seed=n + 1, role="y")
    q = make_features(k, 5, dtype=dtype, geometry=geometry, seed=n + 2, role="y")
    x, y, q = x.requires_grad_(), y.requires_grad_(), q.requires_grad_(queue_grad)
    got = flashnce.infonce(x, y, geometry=geometry, scale=2.0, symmetric=symmetric,
                           negatives=q, backend=backend, reduction="none")
    x64, y64, q64 = (t.detach().double().requires_grad_() for t in (x, y, q))
    want = _oracle_rows(x64, y64, q64, None, None, symmetric, geometry)
    t_loss, t_grad = TOL[dtype]
    assert_close(got.double(), want, t_loss, "loss")
    inputs = [x, y, q] if queue_grad else [x, y]
    gs = torch.autograd.grad(got.sum(), inputs)
    ws = torch.autograd.grad(want.sum(), [x64, y64, q64][:len(inputs)])
    for g, w in zip(gs, ws):
        assert_close(g.double(), w, t_grad, "grad")
    assert q.grad is None


def _random_csr(n, m, g):
    indptr, indices = [0], []
    for i in range(n):
        k = int(torch.randint(0, min(m, 5) + 1, (1,), generator=g))
        cols = torch.randint(0, m, (k,), generator=g)  # unsorted, duplicates allowed
        indices.append(cols)
        indptr.append(indptr[-1] + k)
    return torch.tensor(indptr), torch.cat(indices).long()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRY_NAMES)
@pytest.mark.parametrize("n,m", ((1, 1), (1, 4), (13, 9), (40, 57)))
@pytest.mark.parametrize("with_targets", (False, True))
def test_exclude_csr(backend, geometry, n, m, with_targets):
    if not with_targets and n > m:
        pytest.skip("targets i -> i need N <= M")
    dtype = _dtype_for(backend)
    x = make_features(n, 4, dtype=dtype, geometry=geometry, seed=n + m)
    require_backend(backend, x)
    _skip_slow(backend, n)
    y = make_features(m, 4, dtype=dtype, geometry=geometry, seed=m, role="y")
    g = torch.Generator().manual_seed(n * m)
    targets = torch.randint(0, m, (n,), generator=g) if with_targets else None
    indptr, indices = _random_csr(n, m, g)
    if n > 1 and m > 1:  # a row whose target is in its exclusions (it still counts)
        t0 = 0 if targets is None else int(targets[0])
        indices = indices.clone()
        if indptr[1] > 0:
            indices[0] = t0
    x, y = x.requires_grad_(), y.requires_grad_()
    got = flashnce.infonce(x, y, geometry=geometry, scale=2.0, symmetric=False,
                           targets=targets, exclude=(indptr, indices), backend=backend,
                           reduction="none")
    drop = torch.zeros(n, m, dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(n), indptr[1:] - indptr[:-1])
    drop[rows, indices] = True
    x64, y64 = (t.detach().double().requires_grad_() for t in (x, y))
    want = _oracle_rows(x64, y64, None, drop, targets, False, geometry)
    t_loss, t_grad = TOL[dtype]
    assert_close(got.double(), want, t_loss, "loss")
    for a, b in zip(torch.autograd.grad(got.sum(), [x, y]),
                    torch.autograd.grad(want.sum(), [x64, y64])):
        assert_close(a.double(), b, t_grad, "grad")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_exclude_labels(backend):
    dtype = _dtype_for(backend)
    x = make_features(11, 4, dtype=dtype, seed=1)
    require_backend(backend, x)
    y = make_features(11, 4, dtype=dtype, seed=2)
    lab = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0, 2, 4, 1])
    x, y = x.requires_grad_(), y.requires_grad_()
    got = flashnce.infonce(x, y, symmetric=False, exclude_labels=lab, scale=2.0,
                           backend=backend, reduction="none")
    drop = lab[:, None] == lab[None, :]
    want = _oracle_rows(x.detach().double(), y.detach().double(), None, drop, None, False,
                        "cosine")
    assert_close(got.double(), want, TOL[dtype][0], "loss")
    with pytest.raises(ValueError, match="target must have the row's label"):
        flashnce.infonce(x, y, symmetric=False, exclude_labels=lab,
                         targets=torch.tensor([1] * 11), backend=backend)


def test_bad_column_options():
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"negatives must be \[K, 3\]"):
        flashnce.infonce(x, y, negatives=torch.randn(5, 2))
    with pytest.raises(TypeError, match="negatives must have y's dtype"):
        flashnce.infonce(x, y, negatives=torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="need symmetric=False"):
        flashnce.infonce(x, y, exclude=(torch.zeros(5, dtype=torch.long),
                                        torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="indptr must have N \\+ 1"):
        flashnce.infonce(x, y, symmetric=False, exclude=(torch.zeros(4, dtype=torch.long),
                                                         torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"column indices must lie in \[0, 4\)"):
        flashnce.infonce(x, y, symmetric=False, exclude=(torch.tensor([0, 1, 1, 1, 1]),
                                                         torch.tensor([4])))
    with pytest.raises(TypeError, match="pair"):
        flashnce.infonce(x, y, symmetric=False, exclude=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="not both"):
        flashnce.infonce(x, y, symmetric=False, exclude_labels=torch.zeros(4, dtype=torch.long),
                         exclude=(torch.tensor([0, 0, 0, 0, 0]), torch.zeros(0, dtype=torch.long)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_row_loss_is_never_negative_and_exact_at_large_logits(backend):
    """softplus(lse_neg - pos): >= 0 at scale 100, and ~0 (float64: 0) where the positive
    dominates by far (dot, |x| = 1e4), where lse - pos gave -6.0 before."""
    x = make_features(64, 8, dtype=torch.float32, seed=3)
    require_backend(backend, x)
    per_row = flashnce.infonce(x, x.clone(), scale=100.0, backend=backend, reduction="none")
    assert (per_row >= 0).all()
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1) * 1e4
    per_row = flashnce.infonce(d, d.clone(), geometry="dot", backend=backend, reduction="none")
    want = flashnce.reference_infonce(d.double(), d.double(), geometry="dot", reduction="none")
    assert (per_row >= 0).all()
    assert_close(per_row.double(), want, 1e-6, "large logits", floor=1.0)
