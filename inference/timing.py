"""Timing primitives: warm-up excluded, repeats until the spread is small, median / IQR / min.

CPU work is timed with ``perf_counter_ns``; GPU work with CUDA events recorded on the current stream
around the work, synchronised on the end event, so asynchronous launches are never timed with host
clocks. :func:`measure` repeats a measurement until its relative spread (IQR / median) is at most
``max_spread`` or ``max_repeats`` (or the time budget) is reached; a measurement that stays noisy says so
(``TimingStats.noisy``), and the tables and figures mark it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from time import perf_counter, perf_counter_ns
from typing import Callable

import numpy as np

MAX_SPREAD = 0.10  # IQR / median above which a measurement is called noisy


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated timings, in seconds."""

    median: float
    iqr: float
    min: float
    max: float
    repeats: int
    warmup: int

    @property
    def spread(self) -> float:
        """IQR / median (0 for a single repeat)."""
        return self.iqr / self.median if self.median > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.repeats < 3 or self.spread > MAX_SPREAD

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in {**asdict(self), "spread": self.spread, "noisy": self.noisy}.items()}


def summarize(seconds, warmup: int) -> TimingStats:
    s = np.asarray(seconds, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no timings to summarise")
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return TimingStats(float(med), float(q3 - q1), float(s.min()), float(s.max()), int(s.size), int(warmup))


def _cpu_once(fn):
    t0 = perf_counter_ns()
    fn()
    return (perf_counter_ns() - t0) * 1e-9


def _cupy_once(fn):
    import cupy as cp

    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1e-3


def _torch_once(fn):
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


def _sync(clock: str):
    if clock == "cupy":
        import cupy as cp

        cp.cuda.get_current_stream().synchronize()
    elif clock == "torch":
        import torch

        torch.cuda.synchronize()


_CLOCKS = {"cpu": _cpu_once, "cupy": _cupy_once, "torch": _torch_once}


def measure(fn: Callable[[], object], clock: str = "cpu", repeats: int = 10, warmup: int = 1,
            max_repeats: int | None = None, max_spread: float = MAX_SPREAD, budget_s: float = 30.0,
            warm: Callable[[], object] | None = None) -> TimingStats:
    """Time ``fn``: ``warmup`` untimed calls, then ``repeats`` timed ones, then more (up to ``max_repeats``)
    while IQR / median exceeds ``max_spread`` and the timed calls have used less than ``budget_s`` seconds.
    Where one call is so long that ``repeats`` of them would overrun ``budget_s``, fewer are taken (at least 3;
    such a measurement is flagged noisy when its spread is large, as any other).

    ``warm``: what the untimed calls run instead of ``fn``, for a call made of many equal pieces (a workload
    evaluated in chunks): a cheaper call that meets every first-call cost of ``fn`` (each input shape, each
    allocation size), so a 100 s call is not run a fourth time only to warm up.

    ``clock``: ``"cpu"`` (host clock), ``"cupy"`` or ``"torch"`` (CUDA events on that library's current stream).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if clock not in _CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid: {sorted(_CLOCKS)}")
    once = _CLOCKS[clock]
    for _ in range(warmup):
        (warm or fn)()
    _sync(clock)
    out = []
    started = perf_counter()
    limit = max(repeats, max_repeats or repeats)
    while len(out) < limit:
        out.append(once(fn))
        if len(out) == 1 and out[0] * repeats > budget_s:  # long calls: as many as fit, at least 3
            repeats = limit = max(min(3, repeats), int(budget_s / max(out[0], 1e-12)))
        if len(out) >= repeats:
            stats = summarize(out, warmup)
            if stats.spread <= max_spread or perf_counter() - started > budget_s:
                break
    return summarize(out, warmup)


def time_cpu(fn: Callable[[], object], repeats: int = 10, warmup: int = 1) -> TimingStats:
    """``warmup`` untimed calls, then exactly ``repeats`` timed calls with ``perf_counter_ns``."""
    return measure(fn, "cpu", repeats, warmup)


def time_cuda(fn: Callable[[], object], repeats: int = 10, warmup: int = 1) -> TimingStats:
    """As :func:`time_cpu`, for work launched on CuPy's current CUDA stream (CUDA events)."""
    return measure(fn, "cupy", repeats, warmup)


def time_torch_cuda(fn: Callable[[], object], repeats: int = 10, warmup: int = 1) -> TimingStats:
    """As :func:`time_cpu`, with torch's CUDA events on torch's current stream."""
    return measure(fn, "torch", repeats, warmup)
