"""What machine and which library versions produced a figure."""
from __future__ import annotations

import os
import platform
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> dict:
    """GPU name, driver and CUDA versions through CuPy, if a GPU is usable; else the reason."""
    try:
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(0)
        return {
            "gpu": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
            "gpu_driver": cp.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        }
    except Exception as exc:
        return {"gpu": None, "gpu_reason": f"{type(exc).__name__}: {exc}"}


def machine_info(gpu: bool = True) -> dict:
    """A flat, JSON-serialisable description of this machine and the relevant library versions."""
    info = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for dist in ("numpy", "numba", "torch", "scipy", "sympy", "cupy-cuda12x", "onnxruntime", "tensorrt"):
        v = _version(dist)
        if v:
            info[dist] = v
    try:
        import numba

        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    if gpu:
        info.update(_gpu())
    return info
