"""pytest-benchmark suite options: the sizes of the shared benchmark cases.

    pytest bench/ --benchmark-only                       # N = 1024, 4096; d = 128; cosine
    pytest bench/test_bench_cases.py --benchmark-only --bench-n 8192 --bench-geometry lorentz \
        --bench-providers flashnce materialized compiled

The cases themselves (inputs and the function timed) come from ``flashnce.bench.cases``, the
same definitions the ``flashnce-bench`` CLI sweeps.
"""


def pytest_addoption(parser):
    group = parser.getgroup("flashnce-bench", "flashnce benchmark cases")
    group.addoption("--bench-n", type=int, nargs="+", default=[1024, 4096],
                    help="batch sizes N of the shared cases")
    group.addoption("--bench-d", type=int, nargs="+", default=[128], help="feature dims")
    group.addoption("--bench-geometry", nargs="+", default=["cosine"], help="geometries")
    group.addoption("--bench-dtype", nargs="+", default=["float32"], help="dtypes")
    group.addoption("--bench-providers", nargs="+", default=["flashnce", "materialized"],
                    help="providers (see flashnce-bench --help); compiled and peers are opt-in")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda if any)")
    group.addoption("--bench-rounds", type=int, default=3, help="timed rounds per benchmark")
