"""Timing and peak memory of one benchmark case, optionally in a child process.

Timing: ``warmup`` untimed forward+backward passes, then ``repeats`` passes, each timed as
forward, backward and their sum (CUDA: events around each phase, one synchronisation per
pass, so no host sync sits between forward and backward). Reported as median, p20 and p80.

Peak memory (the extra memory the loss needs, above its inputs):
* CUDA: ``max_memory_allocated`` over the timed passes minus ``memory_allocated`` before them.
* CPU:  peak resident set size over the timed passes minus the RSS before them. The peak is
  reset through ``/proc/self/clear_refs`` (Linux >= 4.0) after ``malloc_trim`` returns freed
  heap to the OS; this is only clean in a process that runs nothing else, hence the child.

Isolation (default): every case runs in a fresh Python process. The parent enforces
``timeout`` on the measurement (warm-up included, start-up excluded) by killing the child,
and ``mem_limit`` caps the child's address space growth above its inputs
(``RLIMIT_AS``), so an oversize case fails fast with MemoryError instead of swapping.
Outcomes: "ok", "oom", "timeout", "skipped", "error".

Each "ok" result also carries ``loss_value``: the loss of the last timed pass (None for the
gemm yardstick), so providers of one case can be checked to compute the same loss.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass

import torch

from . import cases as cases_mod

MIB = float(1 << 20)
# Start-up (interpreter, torch import, inputs) is not part of a case's time budget.
STARTUP_TIMEOUT_S = 180.0
# glibc: a fixed mmap threshold (no dynamic raise to 32 MiB after the first free) and a small
# trim threshold, so freed large blocks go back to the OS and peak RSS tracks peak live
# memory instead of heap the allocator kept. Allocations of 64 KiB and more are mmap-ed
# (blocks over 32 MiB always are); timing is unaffected beyond page faults on fresh blocks.
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Options:
    """How to measure; travels to the child process."""

    warmup: int = 1
    repeats: int = 5
    timeout: float = 120.0  # seconds for warm-up + timed passes
    mem_limit: int | None = None  # bytes above the inputs (CPU, isolated only)
    threads: int | None = None
    isolate: bool = True


# --------------------------------------------------------------------------- statistics

def quantiles(samples: list[float]) -> tuple[float, float, float]:
    """(p20, median, p80) with linear interpolation; NaNs for no samples."""
    if not samples:
        return (math.nan,) * 3
    s = sorted(samples)

    def q(p):
        pos = p * (len(s) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return q(0.2), q(0.5), q(0.8)


# --------------------------------------------------------------------------- CPU memory

def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CpuPeak:
    """Peak RSS above a baseline, with the kernel's high-water mark reset at ``start``."""

    def __init__(self):
        self.method = "clear_refs"
        self.baseline = 0

    def start(self) -> None:
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "ru_maxrss"  # peak since process start: includes import / set-up
        self.baseline = (_proc_status_kib("VmRSS") or 0) * 1024

    def peak_bytes(self) -> int:
        if self.method == "clear_refs":
            hwm = _proc_status_kib("VmHWM")
            if hwm is not None:
                return max(0, hwm * 1024 - self.baseline)
        import resource
        scale = 1 if os.uname().sysname == "Darwin" else 1024
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - self.baseline)


def _set_address_space_limit(extra_bytes: int) -> None:
    """Cap this process's address space at its current size + extra_bytes (Linux/macOS)."""
    import resource
    vm = (_proc_status_kib("VmSize") or 0) * 1024
    limit = vm + int(extra_bytes)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# --------------------------------------------------------------------------- measurement

class _Deadline(Exception):
    pass


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    msg = str(exc).lower()
    return any(s in msg for s in ("out of memory", "can't allocate memory",
                                  "cannot allocate memory", "std::bad_alloc"))


def measure(inputs, fn, *, device: str, warmup: int, repeats: int,
            deadline: float | None = None) -> dict:
    """Time ``fn(*inputs)`` (and its backward when the inputs require grad) and record peak
    memory over the timed passes. ``deadline`` (time.monotonic) is checked between passes."""
    cuda = device.startswith("cuda")
    backward = any(t.requires_grad for t in inputs)

    def check_deadline():
        if deadline is not None and time.monotonic() > deadline:
            raise _Deadline()

    def clear_grads():
        for t in inputs:
            t.grad = None

    # The value of the last scalar output (a loss), kept as a 0-d tensor (no host sync in the
    # passes); a non-scalar output (the gemm yardstick) is not kept, so it cannot raise the peak.
    last_value = []

    def keep(out):
        if isinstance(out, torch.Tensor) and out.dim() == 0:
            last_value[:] = [out.detach()]

    def one_pass():
        clear_grads()
        if cuda:
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            ev[0].record()
            out = fn(*inputs)
            ev[1].record()
            if backward:
                out.backward()
            ev[2].record()
            keep(out)
            torch.cuda.synchronize()
            return ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]) if backward else math.nan
        t0 = time.perf_counter()
        out = fn(*inputs)
        t1 = time.perf_counter()
        if backward:
            out.backward()
        t2 = time.perf_counter()
        keep(out)
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3 if backward else math.nan

    for _ in range(warmup):
        one_pass()
        check_deadline()
    clear_grads()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        mem_method = "cuda_max_memory_allocated"
    else:
        tracker = CpuPeak()
        tracker.start()
    fwd, bwd = [], []
    for _ in range(max(1, repeats)):
        f, b = one_pass()
        fwd.append(f)
        bwd.append(b)
        check_deadline()
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
        baseline = base
    else:
        peak, baseline, mem_method = tracker.peak_bytes(), tracker.baseline, tracker.method
    clear_grads()

    res = {"repeats": len(fwd), "peak_mib": peak / MIB, "baseline_mib": baseline / MIB,
           "mem_method": mem_method,
           "loss_value": float(last_value[0]) if last_value else None}
    full = [f + b for f, b in zip(fwd, bwd)] if backward else list(fwd)
    for name, samples in (("fwd", fwd), ("bwd", bwd if backward else []), ("full", full)):
        p20, p50, p80 = quantiles(samples)
        res.update({f"{name}_ms": p50, f"{name}_p20_ms": p20, f"{name}_p80_ms": p80})
    return res


def _prepare(case: cases_mod.Case):
    """(inputs, fn, info) for a case; info holds what the row should say about the set-up."""
    inputs, fn = cases_mod.setup(case)
    info = {}
    if case.provider.startswith("flashnce"):
        info["backend"] = cases_mod.resolve_flashnce_backend(case, *inputs)
    elif case.provider == "compiled":
        info["backend"] = "inductor"
    return inputs, fn, info


def _error_result(exc: BaseException) -> dict:
    if _is_oom(exc):
        return {"status": "oom", "note": _short(exc)}
    return {"status": "error", "note": _short(exc)}


def _short(exc: BaseException, limit: int = 300) -> str:
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return msg if len(msg) <= limit else msg[:limit] + "..."


def run_in_process(case: cases_mod.Case, opts: Options) -> dict:
    """Measure in this process. The timeout is soft (checked between passes) and there is no
    memory cap: use for debugging, or where child processes are not wanted."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    start = time.monotonic()
    info = {}
    try:
        inputs, fn, info = _prepare(case)
        res = measure(inputs, fn, device=case.device, warmup=opts.warmup,
                      repeats=opts.repeats, deadline=start + opts.timeout)
        res["status"] = "ok"
    except _Deadline:
        res = {"status": "timeout", "note": f"over {opts.timeout:g} s (soft, in-process)"}
    except Exception as exc:  # noqa: BLE001 - a failing case must not end the sweep
        res = _error_result(exc)
    finally:
        if case.device.startswith("cuda"):
            torch.cuda.empty_cache()
    res.update(info)
    res["wall_s"] = time.monotonic() - start
    return res


def _child_main(case_dict: dict, opts: Options, conn) -> None:
    """The child's work: set up, report ready, measure, report (through ``conn``)."""
    try:
        # torch.compile: no pool of compile workers (they would outlive a killed child).
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        if opts.threads:
            torch.set_num_threads(opts.threads)
        case = cases_mod.Case(**case_dict)
        inputs, fn, info = _prepare(case)
        torch.ones(64, 64) @ torch.ones(64, 64)  # start the intra-op thread pool before the cap
        conn.send(("ready", info))
        if opts.mem_limit and case.device == "cpu":
            _set_address_space_limit(opts.mem_limit)
        res = measure(inputs, fn, device=case.device, warmup=opts.warmup, repeats=opts.repeats)
        res["status"] = "ok"
        conn.send(("done", res))
    except BaseException as exc:  # noqa: BLE001 - report everything to the parent
        try:
            res = _error_result(exc)
            if res["status"] == "error":
                res["traceback"] = traceback.format_exc(limit=8)
            conn.send(("done", res))
        except Exception:  # noqa: BLE001 - the pipe itself failed; exit code tells the parent
            pass
    finally:
        conn.close()


def _child_entry() -> None:
    """``python -c`` entry of the child: the task arrives pickled on stdin, results go back
    through the pipe whose fd is argv[1]. A plain subprocess rather than multiprocessing's
    spawn, which would re-run the caller's ``__main__`` (fatal for unguarded scripts)."""
    import pickle
    from multiprocessing.connection import Connection

    conn = Connection(int(sys.argv[1]), readable=False)
    case_dict, opts = pickle.load(sys.stdin.buffer)
    _child_main(case_dict, opts, conn)


def _kill(proc) -> None:
    """Kill the child and anything it started (it leads its own session)."""
    import signal
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
    try:
        proc.wait(10)
    except Exception:  # noqa: BLE001
        pass


def run_isolated(case: cases_mod.Case, opts: Options) -> dict:
    """Measure a case in a fresh Python process; timeouts kill it, failures become rows."""
    import pickle
    import subprocess
    import tempfile
    from multiprocessing.connection import Connection

    if os.name != "posix":
        return run_in_process(case, opts)
    read_fd, write_fd = os.pipe()
    stderr = tempfile.TemporaryFile()
    start = time.monotonic()
    cmd = [sys.executable, "-c",
           "from flashnce.bench.measure import _child_entry; _child_entry()", str(write_fd)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=stderr, pass_fds=(write_fd,), start_new_session=True,
                            env={**os.environ, **CHILD_MALLOC_ENV})
    os.close(write_fd)
    conn = Connection(read_fd, writable=False)
    info: dict = {}
    res: dict | None = None
    try:
        proc.stdin.write(pickle.dumps((case.as_dict(), opts)))
        proc.stdin.close()
        if not conn.poll(STARTUP_TIMEOUT_S):
            res = {"status": "timeout", "note": f"set-up took over {STARTUP_TIMEOUT_S:g} s"}
        else:
            tag, payload = conn.recv()
            if tag == "done":  # failed during set-up
                res = payload
            else:
                info = payload
                measured_from = time.monotonic()
                if conn.poll(opts.timeout):
                    _, res = conn.recv()
                else:
                    res = {"status": "timeout",
                           "note": f"killed after {time.monotonic() - measured_from:.1f} s "
                                   f"(timeout {opts.timeout:g} s)"}
    except (EOFError, OSError):
        res = None  # the child died without a word: see its exit code below
    finally:
        if res is not None and res.get("status") == "timeout":
            _kill(proc)
        else:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _kill(proc)
        conn.close()
    if res is None:
        code = proc.returncode
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        if code is not None and code < 0 and -code == 9:
            res = {"status": "oom", "note": "child killed by SIGKILL (out-of-memory killer?)"}
        else:
            res = {"status": "error",
                   "note": f"child exited with code {code} and no result: " + " | ".join(tail)}
    stderr.close()
    res.update(info)
    res["wall_s"] = time.monotonic() - start
    return res


def run_case(case: cases_mod.Case, opts: Options) -> dict:
    return run_isolated(case, opts) if opts.isolate else run_in_process(case, opts)


# --------------------------------------------------------------------------- pytest-benchmark

MODES = ("fwd", "bwd", "full")


def mode_callables(inputs, fn, mode: str):
    """(target, setup) for ``benchmark.pedantic(target, setup=setup)`` timing one mode.

    fwd: the forward with autograd recording (as in training); bwd: backward only, the
    forward runs in ``setup``; full: forward + backward. ``setup`` clears the gradients.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "fwd" and not any(t.requires_grad for t in inputs):
        raise ValueError(f"mode {mode!r} needs inputs that require grad")

    def clear():
        for t in inputs:
            t.grad = None

    if mode == "fwd":
        def setup():
            clear()

        def target():
            return fn(*inputs)
    elif mode == "bwd":
        def setup():
            clear()
            return (fn(*inputs),), {}

        def target(out):
            out.backward()
    else:
        def setup():
            clear()

        def target():
            fn(*inputs).backward()

    sync = torch.cuda.synchronize if inputs[0].is_cuda else None
    if sync is None:
        return target, setup

    def synced(*args):
        out = target(*args)
        sync()
        return out

    def synced_setup():
        out = setup()
        sync()
        return out

    return synced, synced_setup


def peak_in_process(inputs, fn, mode: str) -> float:
    """Peak MiB above the current usage for one call of a mode, in this process (indicative:
    other work in the process can distort the CPU number)."""
    target, setup = mode_callables(inputs, fn, mode)
    args = setup() or ((), {})
    if inputs[0].is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        target(*args[0], **args[1])
        peak = torch.cuda.max_memory_allocated() - base
    else:
        tracker = CpuPeak()
        tracker.start()
        target(*args[0], **args[1])
        peak = tracker.peak_bytes()
    for t in inputs:
        t.grad = None
    return peak / MIB
