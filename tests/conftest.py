import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.config import read_yaml
from solvers.backends import available_backends


def _gpu_reason():
    return available_backends()["cuda"]


@pytest.fixture(autouse=True)
def _skip_gpu(request):
    """Tests marked ``gpu`` skip, with the reason, where the CUDA backend cannot run."""
    if request.node.get_closest_marker("gpu"):
        reason = _gpu_reason()
        if reason is not None:
            pytest.skip(f"needs a GPU: {reason}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- the workflow's tiny preset
ROOT = Path(__file__).resolve().parents[1]

TINY = read_yaml(ROOT / "config" / "tiny.yaml")  # the tiny preset (merged over config/quick.yaml)


@pytest.fixture
def tiny_config(tmp_path):
    """Write the tiny preset (merged over config/quick.yaml), results under tmp_path/results.
    Returns a function taking overrides (deep-merged) that returns the config file's path."""
    def make(overrides=None, name="tiny.yaml"):
        cfg = copy.deepcopy(TINY)
        cfg["results_dir"] = str(tmp_path / "results")
        _merge(cfg, overrides or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path
    return make


def _merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def snakemake_cmd(*args):
    return [sys.executable, "-m", "snakemake", *map(str, args)]


def run_snakemake(*args, timeout=900, env=None):
    """Run snakemake in the repository; returns the CompletedProcess (stdout and stderr as text)."""
    return subprocess.run(snakemake_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def snakemake():
    return run_snakemake


# ---------------------------------------------------------------- what a CUDA graph may capture
HOST_OPS = {"aten.lift_fresh.default": "a tensor made from host data (a Python list or array) inside the step",
            "aten._local_scalar_dense.default": "a value read back to the host (.item(), bool(), float())"}


def host_touches(ops) -> dict:
    """The operators among ``ops`` that a CUDA graph capture refuses, with why."""
    return {op: why for op, why in HOST_OPS.items() if op in ops}


def op_recorder():
    """A dispatch mode that records the name of every operator run under it (``.ops``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    return Record()
