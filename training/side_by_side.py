"""Several Trainers at once in one process, each in its own thread and, on a GPU, its own CUDA stream.

Where the seeds of a run cannot be stacked into one model (:mod:`~training.cohort`: physics-informed
losses, hh_m's L-BFGS polish), they can still share the GPU inside one process. Without NVIDIA MPS, jobs in
separate processes do not: the GPU runs one process's kernels at a time (measured on an H200, 2026-11-28:
8 training jobs sharing it did the work of one after the other). In one process, each network's captured
step replays on its own stream, and kernels of different streams run side by side on the GPU's many SMs
while the host threads take turns (a replay is a few microseconds of host time; the GIL is released while
PyTorch waits for the device, so one thread's L-BFGS line search reading a loss back does not hold up the
others).

Each Trainer is exactly what it is alone (its own network, data order, files, checkpoints; nothing is
shared but the process): the results equal one-after-the-other training (tests, on the CPU, where the
threads run the same kernels). CUDA graphs captured in these threads are captured on the thread's own
stream with ``capture_error_mode="thread_local"`` (:func:`training.graph.capture`), so one thread's
capture is not invalidated by another thread's work.

**Status**: on the CPU tested for equality with sequential training; **never run on a GPU** (written
2026-11-28 without one). ``training.side_by_side`` (default false) turns it on for the workflow's GPU jobs.
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

_local = threading.local()


def in_side_by_side_thread() -> bool:
    """True in a thread that :func:`train_side_by_side` started (graph capture then stays thread-local)."""
    return getattr(_local, "active", False)


def train_side_by_side(trainers, num_iterations: int) -> list[dict]:
    """Train every Trainer for ``num_iterations`` steps, each in its own thread (on CUDA, on its own stream).
    Returns each one's :meth:`Trainer.train` summary with ``cohort`` (how many trained together) and
    ``train_seconds`` the wall time of them all (as a stacked cohort reports it: each seed's share is that
    divided by ``cohort``). An exception in any thread is raised after the others have finished."""
    if len(trainers) < 2:
        return [{**t.train(num_iterations), "cohort": 1} for t in trainers]
    device = next(trainers[0].model.parameters()).device
    for t in trainers:
        t.label = f"{t.out.name}: "

    def run(t):
        _local.active = True
        try:
            if device.type == "cuda":
                stream = torch.cuda.Stream(device)
                stream.wait_stream(torch.cuda.default_stream(device))  # the networks and data made before
                with torch.cuda.device(device), torch.cuda.stream(stream):
                    out = t.train(num_iterations)
                    torch.cuda.current_stream().synchronize()
                    return out
            return t.train(num_iterations)
        finally:
            _local.active = False

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(trainers), thread_name_prefix="side-by-side") as pool:
        futures = [pool.submit(run, t) for t in trainers]
        errors = [f.exception() for f in futures]  # waits for every thread
    wall = time.perf_counter() - t0
    for e in errors:
        if e is not None:
            raise e
    print(f"trained {len(trainers)} networks side by side in one process ({device.type}): {wall:.1f} s",
          file=sys.stderr, flush=True)
    return [{**f.result(), "train_seconds": wall, "cohort": len(trainers),
             "path": f"side by side ({len(trainers)} threads, training.side_by_side)"} for f in futures]
