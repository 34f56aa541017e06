"""flashnce.features: per-row norms and positive dots, and the in-place gradient folding."""

import pytest
import torch

import flashnce
from flashnce import features

from _helpers import make_features, require_backend


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows (d = 5): several chunks, and a ragged last one, on tiny inputs."""
    monkeypatch.setattr(features, "_CHUNK_ELEMENTS", 15)


def _inputs(n, m, d=5):
    x = make_features(n, d, seed=1, dtype=torch.float64).requires_grad_()
    y = make_features(m, d, seed=2, dtype=torch.float64, role="y").requires_grad_()
    return x, y


TARGET_CASES = {
    "diagonal": (7, 10, None),  # row i's positive is column i (N < M)
    "repeated-targets": (7, 4, torch.tensor([3, 0, 3, 1, 3, 2, 0])),  # shared columns
}


@pytest.mark.parametrize("case", TARGET_CASES, ids=str)
def test_values(small_chunks, case):
    n, m, targets = TARGET_CASES[case]
    x, y = _inputs(n, m)
    x_op, y_op, q_x, q_y, p = features.feature_stats(x, y, targets, with_positives=True)
    assert x_op.data_ptr() == x.data_ptr() and y_op.data_ptr() == y.data_ptr()
    cols = torch.arange(n) if targets is None else targets
    torch.testing.assert_close(q_x, (x * x).sum(-1), rtol=1e-15, atol=0)
    torch.testing.assert_close(q_y, (y * y).sum(-1), rtol=1e-15, atol=0)
    torch.testing.assert_close(p, (x * y[cols]).sum(-1), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("case", TARGET_CASES, ids=str)
def test_gradcheck(small_chunks, case):
    """float64 gradcheck of all five outputs, including the aliases the kernel consumes (whose
    gradient is what the backward adds the norm and positive-pair terms into)."""
    n, m, targets = TARGET_CASES[case]
    x, y = _inputs(n, m)
    fn = lambda a, b: features.feature_stats(a, b, targets, with_positives=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y))


def test_no_positives_gradcheck(small_chunks):
    x, y = _inputs(6, 4)
    fn = lambda a, b: features.feature_stats(a, b)[:4]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y))
    assert features.feature_stats(x, y)[4].numel() == 0


def test_kernel_gradient_is_added_into_in_place(small_chunks):
    """The alias gradient, when the node owns it (a fresh contiguous tensor, as the kernels
    return), is updated in place and returned as x's gradient: no N x d copy."""
    x, y = _inputs(7, 7)
    x_op, y_op, q_x, q_y, p = features.feature_stats(x, y, None, with_positives=True)
    g_x = torch.randn(7, 5, dtype=torch.float64)
    g_y = torch.randn(7, 5, dtype=torch.float64)
    g_q = torch.randn(7, dtype=torch.float64)
    want_x = g_x + 2 * g_q[:, None] * x.detach() + g_q[:, None] * y.detach()
    kept = g_x.clone()
    gx, gy = torch.autograd.grad([x_op, y_op, q_x, p], [x, y], [kept, g_y.clone(), g_q, g_q])
    torch.testing.assert_close(gx, want_x)
    assert gx.data_ptr() == kept.data_ptr()


def test_view_gradient_is_copied_not_modified():
    """A gradient that is a view of someone else's tensor is copied before adding into it."""
    x, y = _inputs(4, 4)
    x_op, _, q_x, _, _ = features.feature_stats(x, y)
    base = torch.randn(8, 5, dtype=torch.float64)
    before = base.clone()
    (gx,) = torch.autograd.grad([x_op, q_x], [x], [base[:4], torch.ones(4, dtype=torch.float64)])
    torch.testing.assert_close(base, before, rtol=0, atol=0)
    torch.testing.assert_close(gx, before[:4] + 2 * x.detach())


def test_one_gradient_tensor_for_both_aliases_is_not_added_into_twice():
    """If autograd hands the same tensor to both aliases (e.g. a consumer like x' + y'), the
    second is copied first, so neither gradient sees the other's terms."""
    x, y = _inputs(4, 4)
    x_op, y_op, q_x, q_y, _ = features.feature_stats(x, y)
    g = torch.randn(4, 5, dtype=torch.float64)
    want = g.clone()
    ones = torch.ones(4, dtype=torch.float64)
    gx, gy = torch.autograd.grad([x_op, y_op, q_x, q_y], [x, y], [g, g, ones, ones])
    torch.testing.assert_close(gx, want + 2 * x.detach())
    torch.testing.assert_close(gy, want + 2 * y.detach())


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_cosine_gradient_has_no_radial_rounding(backend, dtype):
    """Cosine logits are scale invariant per row, so the exact gradient is orthogonal to x_i.

    d = 1: the exact gradient is 0. Without the projection the cpu and torch backends leave
    ~9e-4 (bf16), ~1e-4 (fp16), ~3e-7 (fp32) there; with it, < 1e-10.
    d = 16, bf16: the radial share of each row's gradient is then the final bf16 rounding only,
    below half the unit roundoff (2^-9; measured 1e-3, and 3.3e-3 without the projection).
    """
    require_backend(backend)
    cases = [(1, 1e-9)] + ([(16, 2.0**-9)] if dtype == torch.bfloat16 else [])
    for d, bound in cases:
        x = make_features(64, d, seed=3, dtype=dtype).requires_grad_()
        y = make_features(64, d, seed=4, dtype=dtype, role="y").requires_grad_()
        loss = flashnce.infonce(x, y, scale=14.3, backend=backend)
        for feats, grad in zip((x, y), torch.autograd.grad(loss, [x, y])):
            g, f = grad.double(), feats.detach().double()
            if d == 1:
                assert g.abs().max() <= bound, g.abs().max()
            else:
                radial = (g * f).sum(-1).abs() / (g.norm(dim=-1) * f.norm(dim=-1))
                assert radial.max() <= bound, radial.max()


def test_scatter_of_repeated_targets_is_deterministic():
    """dY of one-way InfoNCE with repeated targets is bitwise reproducible (index_put_ with
    accumulate uses float atomics on CPU at this size; index_add_ does not)."""
    require_backend("cpu")
    x = make_features(4096, 16, seed=5)
    y = make_features(512, 16, seed=6, role="y")
    targets = torch.randint(0, 512, (4096,), generator=torch.Generator().manual_seed(1))

    def dy():
        yy = y.clone().requires_grad_()
        loss = flashnce.infonce(x, yy, symmetric=False, targets=targets, backend="cpu")
        return torch.autograd.grad(loss, yy)[0]

    first = dy()
    for _ in range(3):
        assert torch.equal(dy(), first)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_double_backward_is_refused_clearly(backend):
    """The kernels' backward and the in-place gradient folding are not differentiable: a
    second-order gradient raises instead of returning a wrong number."""
    require_backend(backend)
    x, y = _inputs(6, 6)
    (gx,) = torch.autograd.grad(flashnce.infonce(x, y, backend=backend), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.square().sum().backward()


def test_second_order_in_scale_is_refused_on_the_compiled_backend():
    """The compiled backward op has no derivative: a second derivative in the scale must not
    come back as a silent 0 (it did, with only a warning, before its backward was marked
    once-differentiable)."""
    require_backend("cpu")
    x, y = _inputs(6, 6)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (g_scale,) = torch.autograd.grad(flashnce.infonce(x, y, scale=scale, backend="cpu"), scale,
                                     create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g_scale, scale)
