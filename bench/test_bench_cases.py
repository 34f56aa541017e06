"""Kernel microbenchmarks over the shared cases (``flashnce.bench.cases``), one benchmark per
provider x N x d x geometry x dtype x mode (fwd, bwd, fwd+bwd), plus the plain GEMM of each
shape as the yardstick.

    pytest bench/ --benchmark-only [--benchmark-json out.json]
    pytest bench/test_bench_cases.py --benchmark-only -k same_set --bench-providers flashnce pml

``test_same_set`` times the same-set losses (supcon, ntxent, uniformity; see
``flashnce.bench.cases``) on the same N x N sizes as InfoNCE; uniformity runs in
"sqeuclidean" (Wang & Isola's metric, the only one the ``pdist`` provider has), supcon and
ntxent in the first ``--bench-geometry``. ``test_providers_compute_the_same_loss`` (not a
benchmark: skipped under --benchmark-only) checks every available provider of every loss
gives the same value.

Each benchmark's extra_info holds the GFLOP/s (algorithmic count, ``cases.flops``), the
backend flashnce picked, and an in-process peak-memory reading (the CLI's child-process
numbers are the clean ones).
"""

import pytest
import torch

from flashnce.bench import cases as C
from flashnce.bench import measure as M


def _device(config):
    return config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")


def pytest_generate_tests(metafunc):
    cfg = metafunc.config
    grid = {
        "n": cfg.getoption("--bench-n"),
        "d": cfg.getoption("--bench-d"),
        "geometry": cfg.getoption("--bench-geometry"),
        "dtype": cfg.getoption("--bench-dtype"),
        "provider": cfg.getoption("--bench-providers"),
        "mode": list(M.MODES),
    }
    for name, values in grid.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values, ids=[f"{name}={v}" for v in values])


def _run(benchmark, case, mode, rounds):
    reason = C.unavailable_reason(case)
    if reason is not None:
        pytest.skip(reason)
    inputs, fn = C.setup(case)
    target, setup = M.mode_callables(inputs, fn, mode)
    benchmark.group = f"{case.loss} {case.geometry} {case.dtype} d={case.d} N={case.n} {mode}"
    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1)
    median_s = benchmark.stats.stats.median
    mode_flops = C.flops(case.n, case.n, case.d, "fwd" if case.provider == "gemm" else mode)
    benchmark.extra_info.update({
        "provider": case.provider, "loss": case.loss, "mode": mode, "n": case.n, "d": case.d,
        "geometry": case.geometry, "dtype": case.dtype, "device": case.device,
        "gflops": mode_flops / median_s / 1e9,
        "peak_mib_in_process": M.peak_in_process(inputs, fn, mode),
        "threads": torch.get_num_threads(),
    })
    if case.provider.startswith("flashnce"):
        benchmark.extra_info["backend"] = C.resolve_flashnce_backend(case, *inputs)


def test_infonce(benchmark, request, provider, n, d, geometry, dtype, mode):
    case = C.Case(provider=provider, n=n, d=d, geometry=geometry, dtype=dtype,
                  device=_device(request.config))
    _run(benchmark, case, mode, request.config.getoption("--bench-rounds"))


def test_gemm(benchmark, request, n, d, dtype):
    case = C.Case(provider="gemm", n=n, d=d, dtype=dtype, device=_device(request.config))
    _run(benchmark, case, "fwd", max(request.config.getoption("--bench-rounds"), 5))


@pytest.mark.parametrize("loss", C.SAME_SET_LOSSES)
def test_same_set(benchmark, request, provider, n, d, dtype, mode, loss):
    geometry = ("sqeuclidean" if loss == "uniformity"
                else request.config.getoption("--bench-geometry")[0])
    case = C.Case(provider=provider, n=n, d=d, geometry=geometry, dtype=dtype,
                  device=_device(request.config), loss=loss)
    _run(benchmark, case, mode, request.config.getoption("--bench-rounds"))


_PROVIDERS = ("flashnce", "flashnce-torch", "flashnce-cpu", "materialized", "open_clip",
              "pml", "pdist")


@pytest.mark.parametrize("loss,geo", [(loss, g) for loss in C.LOSSES
                                      for g in ("cosine", "sqeuclidean")])
def test_providers_compute_the_same_loss(loss, geo):
    """``inputs, fn = setup(case); fn(*inputs)`` agrees across the available providers to 1e-4
    relative in fp32 (tiny N, CPU): the benchmarked functions are the same loss."""
    values = {}
    for provider in _PROVIDERS:
        case = C.Case(provider=provider, n=64, d=16, geometry=geo, loss=loss)
        reason = C.unavailable_reason(case)
        if reason is not None:
            print(f"{loss} {geo} {provider}: not checked ({reason})")
            continue
        inputs, fn = C.setup(case)
        values[provider] = float(fn(*inputs).detach())
    assert "materialized" in values and "flashnce-torch" in values
    ref = values["materialized"]
    for provider, v in values.items():
        assert abs(v - ref) <= 1e-4 * abs(ref), values
