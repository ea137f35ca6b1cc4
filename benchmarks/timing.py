"""Timing primitives: warm-up excluded, repeats, median / IQR / min.

CPU work is timed with ``perf_counter_ns``; GPU work with CUDA events recorded on the current stream
around the work, synchronised on the end event, so asynchronous launches are never timed with host
clocks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from time import perf_counter_ns
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated timings, in seconds."""

    median: float
    iqr: float
    min: float
    max: float
    repeats: int
    warmup: int

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def summarize(seconds, warmup: int) -> TimingStats:
    s = np.asarray(seconds, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no timings to summarise")
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return TimingStats(float(med), float(q3 - q1), float(s.min()), float(s.max()), int(s.size), int(warmup))


def time_cpu(fn: Callable[[], object], repeats: int = 10, warmup: int = 1) -> TimingStats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed with ``perf_counter_ns``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = perf_counter_ns()
        fn()
        out.append((perf_counter_ns() - t0) * 1e-9)
    return summarize(out, warmup)


def time_cuda(fn: Callable[[], object], repeats: int = 10, warmup: int = 1) -> TimingStats:
    """As :func:`time_cpu`, for work launched on the current CUDA stream (CuPy events)."""
    import cupy as cp

    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    out = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)
    return summarize(out, warmup)


def time_torch_cuda(fn: Callable[[], object], repeats: int = 10, warmup: int = 1) -> TimingStats:
    """As :func:`time_cuda`, with torch's CUDA events on torch's current stream."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) * 1e-3)
    return summarize(out, warmup)
