"""What machine and which library versions produced a figure; whether a CUDA device is usable.

Nothing here imports torch: the workflow asks :func:`cuda_device_count` while it parses, and that must
stay fast. GPU details come from the CUDA driver (``libcuda``, through ctypes) and, where installed, CuPy.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
from functools import lru_cache
from importlib import metadata

VERSIONED = ("numpy", "numba", "torch", "triton", "scipy", "sympy", "cupy-cuda12x", "cupy-cuda13x", "onnxruntime",
             "onnxruntime-gpu", "tensorrt", "snakemake")


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


@lru_cache(maxsize=1)
def _libcuda():
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) == 0:
            return lib
    return None


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or device). Does not import torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    lib = _libcuda()
    if lib is None:
        return 0
    n = ctypes.c_int(0)
    return n.value if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0


def _gpu() -> dict:
    """GPU name and driver version from the CUDA driver, if a GPU is usable; else the reason."""
    lib = _libcuda()
    if lib is None or cuda_device_count() == 0:
        return {"gpu": None, "gpu_reason": "no CUDA driver or device"}
    name = ctypes.create_string_buffer(256)
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), 0)
    lib.cuDeviceGetName(name, 256, dev)
    driver = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(driver))
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
    return {"gpu": name.value.decode(), "gpu_driver": driver.value, "gpu_capability": f"{major.value}.{minor.value}"}


def _numba_threads() -> int:
    """Numba's thread count, without starting its thread pool: ``numba.get_num_threads()`` starts it, and its
    OpenMP layer then resets the OpenMP thread count that torch set (``torch.set_num_threads(1)`` read back
    as 2 on the 2-core VM, and torch's element-wise operators ran on both cores), so a benchmark that asked
    for one thread and then described its machine timed two. Where the pool is already running its count is
    read; torch's setting is restored either way."""
    import numba
    from numba.np.ufunc import parallel

    if not getattr(parallel, "_is_initialized", True):
        return int(numba.config.NUMBA_NUM_THREADS)
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    n = int(numba.get_num_threads())
    if before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)
    return n


def machine_info(gpu: bool = True) -> dict:
    """A flat, JSON-serialisable description of this machine and the relevant library versions."""
    info = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for dist in VERSIONED:
        v = _version(dist)
        if v:
            info[dist] = v
    try:
        info["numba_threads"] = _numba_threads()
    except ImportError:
        pass
    if gpu:
        info.update(_gpu())
    return info


def describe_machine(info: dict | None = None) -> str:
    """One line naming the machine: the GPU when there is one, else the CPU and its cores."""
    info = info or machine_info()
    cpu = f"{info['cpu']} ({info['cores']} cores)"
    return f"{info['gpu']} + {cpu}" if info.get("gpu") else cpu
