"""gloo CPU process groups for the distributed tests: spawn W workers once, collect their
results in the parent, fail (instead of hanging CI) when they do not finish in time.

A worker is ``worker(rank, world, store_dir, *args)``; it calls ``gloo_results(rank, world,
store_dir)``, a context manager that joins the group (FileStore rendezvous in store_dir,
60 s collective timeout, one intra-op thread), yields (group, results dict) and, whatever
happens, saves the dict for the parent and leaves the group.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@contextlib.contextmanager
def gloo_results(rank: int, world: int, store_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{os.path.join(store_dir, 'store')}", rank=rank,
        world_size=world, timeout=datetime.timedelta(seconds=60))
    results: dict = {}
    try:
        yield dist.group.WORLD, results
    finally:
        torch.save(results, os.path.join(store_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def record(results: dict, name: str, fn, *args):
    """results[name] = fn(*args), or the traceback text when it raises (the parent fails the
    test that reads it, with the rank's traceback)."""
    try:
        results[name] = fn(*args)
    except Exception:
        results[name] = traceback.format_exc()


def spawn_gloo(worker, world: int, store_dir: str, *args, timeout_s: float) -> list:
    """Run ``worker`` on ``world`` spawned processes; their results dicts in rank order."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    ctx = mp.start_processes(worker, args=(world, store_dir, *args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:  # only the processes this test started
                proc.kill()
            pytest.fail(f"{world} gloo processes did not finish within {timeout_s} s")
    return [torch.load(os.path.join(store_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(world)]
