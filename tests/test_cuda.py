"""The generated CUDA kernel: compiled with nvcc where present; run against NumPy on a GPU."""
import shutil
import subprocess

import numpy as np
import pytest

import solvers
from solvers.backends.cuda import cuda_source, kernel_name

MODELS = solvers.list_models()  # every registered model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", MODELS)
def test_generated_source_compiles_with_nvcc(name, dtype, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    src = tmp_path / f"{name}_{dtype}.cu"
    src.write_text(cuda_source(solvers.get_model(name), dtype))
    res = subprocess.run([nvcc, "-arch=sm_90", "--ptx", "-o", str(tmp_path / "k.ptx"), str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    assert kernel_name(solvers.get_model(name), dtype) in ptx
    if dtype == "float32" and name == "hh":
        assert ".f64" not in ptx.split(".entry")[1], "single-precision kernel must not fall back to double"


def test_source_uses_single_precision_functions():
    src = cuda_source(solvers.get_model("hh"), "float32")
    assert "expf(" in src and "expm1f(" in src and " exp(" not in src and "double" not in src
    assert "float V = _y0[_i * 4 + 0];" in src


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-3), ("float64", 1e-9)])
@pytest.mark.parametrize("name", MODELS)
def test_cuda_matches_numpy(name, dtype, tol, rng):
    y0, params = solvers.get_model(name).sample_typical(1000, rng)  # cells from the model's typical box
    _, ref = solvers.simulate(name, y0, 20.0, 0.01, 10, params, backend="numpy")
    for fast_math in (False, True):
        _, Y = solvers.simulate(name, y0, 20.0, 0.01, 10, params, backend="cuda", dtype=dtype, fast_math=fast_math)
        err = np.abs(Y - ref).max(axis=(0, 1)) / np.abs(ref).max(axis=(0, 1))
        assert (err < (tol if not fast_math else max(tol, 2e-3))).all(), (fast_math, err)


@pytest.mark.gpu
def test_cuda_reports_non_finite_state():
    y0 = np.tile([0.5, 0.0], (300, 1))
    y0[217] = [40.0, 0.0]
    with pytest.raises(solvers.NonFiniteStateError) as err:
        solvers.simulate("fhn", y0, 2.0, 0.01, 50, backend="cuda")
    assert (err.value.variable, err.value.cell) == ("u", 217)


def ptxas_report(source: str, tmp_path, name: str) -> dict:
    """Build ``source`` for sm_90 with ptxas' resource report; returns registers and spill bytes."""
    import re

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    src = tmp_path / f"{name}.cu"
    src.write_text(source)
    res = subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / f"{name}.cubin"), str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = res.stderr + res.stdout
    regs = [int(r) for r in re.findall(r"Used (\d+) registers", text)]
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)]
    print(f"{name}: ptxas sm_90: {regs} registers, {spills} bytes spilled")
    return {"registers": max(regs), "spill_bytes": sum(spills)}


@pytest.mark.parametrize("name", MODELS)
def test_solver_kernels_build_for_sm90_without_register_spills(name, tmp_path):
    r = ptxas_report(cuda_source(solvers.get_model(name), "float32"), tmp_path, f"euler_{name}")
    assert r["spill_bytes"] == 0 and r["registers"] <= 64
