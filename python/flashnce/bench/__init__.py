"""flashnce benchmarks: ``flashnce-bench`` / ``python -m flashnce.bench`` and shared cases.

    cases    case definitions, ``setup(case) -> (inputs, fn)``, shared with ``bench/`` (pytest)
    measure  timing quantiles and peak memory, each case in a child process
    report   environment stamp, JSON / CSV, table, plots
    cli      the sweep and its command line
"""

from .cases import Case, flops, setup
from .cli import main

__all__ = ["Case", "flops", "main", "setup"]
