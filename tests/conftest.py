"""Test-session setup that must happen before anything imports flashnce.

The Triton kernels are decorated when ``import flashnce`` loads them, interpreted or compiled
depending on ``TRITON_INTERPRET`` at that moment. This machine has no GPU, so the suite runs
them through the interpreter on CPU tensors (``backend="triton"`` by name only: ``auto``
never picks the interpreter, so no other test is slowed down by it).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
