"""pytest-benchmark suite of the compiled ``cpu`` backend (symmetric InfoNCE fwd + bwd, fp32).

    pytest bench/test_bench_cpu_kernel.py --benchmark-only [--benchmark-json out.json]

Providers per case: ``cpu`` (this backend), ``gemm`` (one N x d . d x N torch.mm, the unit of
the ratios in bench/results/) and ``materialised`` (flashnce.reference_infonce). The full sweep
with ratios and memory is bench/cpu_kernel_bench.py; this suite keeps sizes small.
"""

import pytest
import torch

from flashnce import _extension

import cpu_kernel_bench as cb

pytestmark = pytest.mark.skipif(
    not _extension.load(), reason=f"cpu backend unavailable: {_extension.why_unavailable()}")

CASES = [(n, d, g) for n in (1024, 4096) for d in (128,) for g in ("cosine", "lorentz")]


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("provider", ["cpu", "gemm", "materialised"])
@pytest.mark.parametrize("n,d,geometry", CASES)
def test_infonce_fwd_bwd(benchmark, n, d, geometry, provider):
    x, y = cb.features(n, d, geometry, 0), cb.features(n, d, geometry, 1)
    if provider == "gemm":
        fn = lambda: torch.mm(x, y.T)  # noqa: E731
    else:
        fn = lambda: cb.step(x, y, geometry, provider)  # noqa: E731
    benchmark.extra_info.update(n=n, d=d, geometry=geometry, provider=provider,
                                threads=torch.get_num_threads())
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
