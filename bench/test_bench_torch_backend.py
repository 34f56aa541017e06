"""pytest-benchmark: the `torch` backend's forward+backward against the materialised loss and
against one plain ``x @ y.T`` GEMM of the same shape.

    pytest bench/test_bench_torch_backend.py --benchmark-only

Each case stores ``ratio_to_gemm`` (median time / median time of one N x d . d x N GEMM, both
from the same run) in the benchmark's extra_info. ``bench/torch_backend_ratio.py`` writes the
committed numbers at N = 8192, d = 512.
"""

import pytest
import torch

import flashnce

SHAPES = [(1024, 128), (2048, 256)]


def _inputs(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).requires_grad_()
    y = torch.randn(n, d, generator=g).requires_grad_()
    return x, y


def _loss_fn(provider, x, y):
    if provider == "materialised":
        return lambda: flashnce.reference_infonce(x, y, scale=14.3).backward()
    return lambda: flashnce.infonce(x, y, scale=14.3, backend="torch").backward()


@pytest.fixture(scope="module")
def gemm_medians():
    """Median seconds of one x @ y.T per shape, measured once per run."""
    import time

    out = {}
    for n, d in SHAPES:
        x, y = (t.detach() for t in _inputs(n, d))
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            x @ y.T
            times.append(time.perf_counter() - t0)
        out[(n, d)] = sorted(times)[len(times) // 2]
    return out


@pytest.mark.parametrize("provider", ["torch-backend", "materialised"])
@pytest.mark.parametrize("n,d", SHAPES)
def test_infonce_fwd_bwd(benchmark, gemm_medians, provider, n, d):
    x, y = _inputs(n, d)
    fn = _loss_fn(provider, x, y)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    benchmark.extra_info["ratio_to_gemm"] = benchmark.stats["median"] / gemm_medians[(n, d)]
    benchmark.extra_info["threads"] = torch.get_num_threads()
