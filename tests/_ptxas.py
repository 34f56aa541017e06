"""Reading what the NVIDIA compiler says about a kernel: ptxas' -v report and cuobjdump's SASS.

``parse_ptxas_log`` turns the report of a whole build (nvcc -Xptxas=-v, any number of sources
and architectures; Triton's ``dump_ptxas_log`` prints the same lines for one kernel) into one
row per (kernel, architecture): registers, spill store / load bytes, stack frame and static
shared memory. ``sass_functions`` splits ``cuobjdump -sass`` output into each function's
instructions, so a test can ask whether a kernel issues tensor-core instructions (HMMA).
"""

from __future__ import annotations

import re
import shutil
import subprocess

REGS = re.compile(r"Used (\d+) registers")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_STACK = re.compile(r"(\d+) bytes stack frame")
_SMEM = re.compile(r"(\d+) bytes smem")
_SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)\s*$", re.MULTILINE)
MAX_REGS = 255
STATIC_SMEM_LIMIT = 48 * 1024  # static __shared__ per block, every architecture


def parse_ptxas_log(text: str) -> list[dict]:
    """[{name, arch, regs, spill_stores, spill_loads, stack, smem}] in the log's order; a
    kernel's numbers are the lines between its "Compiling entry function" and the next."""
    rows, row = [], None
    for line in text.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            row = dict(name=entry.group(1), arch=int(entry.group(2)[3:]), regs=None,
                       spill_stores=None, spill_loads=None, stack=None, smem=0)
            rows.append(row)
            continue
        if row is None:
            continue
        if (m := SPILLS.search(line)):
            row["spill_stores"], row["spill_loads"] = int(m.group(1)), int(m.group(2))
            if (s := _STACK.search(line)):
                row["stack"] = int(s.group(1))
        if (m := REGS.search(line)):
            row["regs"] = int(m.group(1))
            if (s := _SMEM.search(line)):
                row["smem"] = int(s.group(1))
    return rows


def demangle(names: list[str]) -> dict[str, str]:
    """{mangled: readable} through c++filt (the name itself where c++filt is missing), without
    the argument list: ``flashnce::cuda::detail::tile_fwd_kernel<float, 4, 0, true>``."""
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return {n: _strip_arguments(r) for n, r in zip(names, out)}


def _strip_arguments(name: str) -> str:
    """'void ns::f<a, b>(args)' -> 'ns::f<a, b>'."""
    name = name.removeprefix("void ")
    depth = 0
    for k, ch in enumerate(name):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            return name[:k]
    return name


def sass_functions(text: str) -> dict[str, str]:
    """{mangled function name: its SASS} from ``cuobjdump -sass`` output (functions of every
    embedded cubin; a name seen for two architectures keeps both bodies, concatenated)."""
    out: dict[str, str] = {}
    marks = list(_SASS_FUNCTION.finditer(text))
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        out[m.group(1)] = out.get(m.group(1), "") + text[m.end():end]
    return out


def check_resources(row: dict, baseline_spills: int | None = 0) -> list[str]:
    """What is wrong with one kernel's report: no report, registers > 255, static shared
    memory past 48 KiB, or more spill-store bytes than ``baseline_spills`` (0: none allowed;
    the recorded debt of a kernel that spills today otherwise)."""
    if row["regs"] is None or row["spill_stores"] is None:
        return ["no ptxas -v report"]
    bad = []
    if row["regs"] > MAX_REGS:
        bad.append(f"{row['regs']} registers > {MAX_REGS}")
    if row["smem"] > STATIC_SMEM_LIMIT:
        bad.append(f"{row['smem']} bytes of static shared memory > {STATIC_SMEM_LIMIT}")
    allowed = baseline_spills or 0
    if row["spill_stores"] > allowed:
        bad.append(f"{row['spill_stores']} bytes of spill stores > {allowed} "
                   f"({row['spill_loads']} bytes of spill loads)")
    return bad
