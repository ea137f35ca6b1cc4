"""Inference backends, ONNX export, the timing harness and the workloads."""
import time

import numpy as np
import pytest
import torch

from benchmarks import speedup
from core.config import merge
from core.errors import InvalidInputError
from core.io import write_record
from inference import workloads
from inference.backends import (REGISTRY, TOLERANCE, BackendMismatchError, Runner, check_against_torch,
                                fastest_cpu_backend, get_inference_backend, reference_outputs)
from inference.export import export_onnx
from inference.timing import time_cpu
from inference.workloads import Case, kept_times
from surrogates.config import load_config, validate_config
from surrogates.network import MLP, save_checkpoint
from surrogates.scoring import expected_model


def direct_rows(problem, n_cells, n_outputs, t_end=50.0):
    case = Case(problem, n_cells, n_outputs, t_end)
    return case.direct_rows(), case.cells


def save_as(net, path, cfg, problem, kind, mae=0.01):
    """A checkpoint and metrics.json recording that ``net`` is the ``kind`` surrogate of ``problem``."""
    prov = {**expected_model(cfg, problem, kind, 100, 0), "hidden": [list(h) for h in net.hidden]}
    save_checkpoint(net, path, meta={"provenance": prov})
    write_record(path.parent / "metrics.json", {"provenance": prov, "problem": problem, "surrogate": kind, "mae": mae})
    return path


def speed_cfg(**speed):
    return validate_config(merge(load_config().as_dict(), {"speed": {"repeats": 2, "max_repeats": 2, **speed}}))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return MLP(4, 2, [("SiLU", 32), ("Sigmoid", 32), ("Tanh", 16)], input_range=([0, -0.1, 0, 0.08], [50, 0.81, 0.12, 0.12]),
               output_center=[0.4, 0.1], output_scale=[0.6, 0.1]).eval()


@pytest.fixture(scope="module")
def problem_c():
    return load_config().problem("C")


def test_onnx_export_and_onnxruntime_agree_with_torch(net, tmp_path, problem_c):
    X, _ = direct_rows(problem_c, 300, 26)
    runner = REGISTRY["onnxruntime"].prepare(net, "fp32", tmp_path)
    assert (tmp_path / "model_fp32.onnx").exists()
    err = check_against_torch(net, runner, X, "fp32", "onnxruntime")
    assert err < 1e-5
    assert runner(X[:7]).shape == (7, 2) and runner(X).shape == (len(X), 2)  # dynamic batch
    import onnx

    model = onnx.load(str(tmp_path / "model_fp32.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_fp16_export_is_a_half_precision_graph(net, tmp_path):
    import onnx

    path = export_onnx(net, tmp_path / "m16.onnx", "fp16")
    g = onnx.load(str(path)).graph
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert not list(tmp_path.glob("*.tmp"))


def test_a_wrong_backend_fails_loudly_before_timing(net, problem_c):
    X, _ = direct_rows(problem_c, 50, 26)
    good = REGISTRY["torch"].prepare(net, "fp32", None)
    bad = Runner(good.device_input, lambda xd: good.run(xd) * 1.01, good.to_host)
    assert check_against_torch(net, good, X, "fp32", "torch") < 1e-5
    with pytest.raises(BackendMismatchError, match="differs from eager torch"):
        check_against_torch(net, bad, X, "fp32", "bad")


def test_missing_backends_are_skipped_with_their_reason(net, tmp_path, problem_c):
    cfg = speed_cfg(n_cells=[500], k_sweep=[])
    path = save_as(net, tmp_path / "m" / "best_model.pth", cfg, "C", "ddnn")
    df = speedup.run(cfg, {"ddnn": path}, ["torch", "onnxruntime", "tensorrt", "fused", "torch_compile"], ["fp32"],
                     workdir=tmp_path / "w")
    skipped = df[df.skipped.notna()].set_index("backend").skipped if "skipped" in df else {}
    if not torch.cuda.is_available():
        assert "tensorrt" in skipped and "torch_compile" in skipped and "fused" in skipped
        assert "CUDA" in skipped["torch_compile"] and "tensorrt" in skipped["tensorrt"]
    timed = df[df.skipped.isna()] if "skipped" in df else df
    assert set(timed.backend) >= {"torch", "onnxruntime"}
    assert (timed.rows == 500 * 26).all() and (timed.speedup > 0).all() and (timed.solver_backend == "cpu").all()
    assert {"cpu", "cores", "numpy", "torch"} <= set(df.columns)


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(InvalidInputError, match=r"unknown inference backend 'trt'; valid: \["):
        get_inference_backend("trt")


# ---------------------------------------------------------------- timing harness
def test_harness_statistics_on_a_known_sleep():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.2 if len(calls) == 1 else 0.01)  # the first (warm-up) call is slow

    s = time_cpu(work, repeats=10, warmup=1)
    assert s.repeats == 10 and len(calls) == 11
    assert 0.0099 <= s.min <= s.median < 0.03 and s.max < 0.1  # warm-up excluded
    assert 0 <= s.iqr < 0.01


def test_a_warm_up_can_be_a_cheaper_call_than_the_timed_one():
    from inference.timing import measure

    calls = []

    stats = measure(lambda: calls.append("timed"), "cpu", repeats=4, warmup=2, warm=lambda: calls.append("warm"))
    assert calls == ["warm", "warm"] + ["timed"] * stats.repeats and stats.repeats == 4


def recording_backend(monkeypatch) -> list:
    """Register backend ``recording``: eager torch on the CPU that records the rows of every call (returned)."""
    from inference import backends as B

    sizes = []

    class Recording(B.TorchEager):
        def __init__(self):
            super().__init__("cpu")
            self.name = "recording"

        def prepare(self, model, prec, workdir):
            r = super().prepare(model, prec, workdir)
            run = r.run
            r.run = lambda xd: (sizes.append(len(xd)), run(xd))[1]
            return r

    monkeypatch.setitem(REGISTRY, "recording", Recording())
    return sizes


def test_a_chunked_speed_point_warms_up_on_its_first_and_last_chunk(net, tmp_path, monkeypatch):
    """N x K = 100 x 26 rows in calls of at most 1,000 rows, i.e. of 38 whole cells (988 rows): the warm-up
    runs the first and the last call (both shapes the timed calls meet), each timed call all three."""
    monkeypatch.setattr(workloads, "CHUNK_ROWS", 1000)
    sizes = recording_backend(monkeypatch)
    cfg = speed_cfg(n_cells=[100], n_outputs=26, k_sweep=[], repeats=3, max_repeats=3)
    path = save_as(net, tmp_path / "C/ddnn/best_model.pth", cfg, "C", "ddnn")
    df = speedup.run(cfg, {"ddnn": path}, ["recording"], ["fp32"], workdir=tmp_path / "w")
    assert len(df[df.skipped.isna() & df.failed.isna()]) == 1
    timed = sizes[-9:]
    assert timed == [988, 988, 624] * 3 and sizes[-11:-9] == [988, 624]


# ---------------------------------------------------------------- workloads
def test_direct_workload_has_exactly_n_times_k_rows_of_real_inputs(problem_c):
    X, c = direct_rows(problem_c, 37, 26)
    assert X.shape == (37 * 26, 4) and X.dtype == np.float32
    np.testing.assert_allclose(X[:26, 0], np.arange(26) * 2.0)
    np.testing.assert_allclose(X[26:52, 0], np.arange(26) * 2.0)
    per_cell = X[::26, 1:]
    assert len(np.unique(per_cell, axis=0)) == 37 and per_cell.std(axis=0).min() > 0
    for j, name in enumerate(["u0", "w0", "I"]):
        lo, hi = problem_c.ranges[name]
        assert (per_cell[:, j] >= lo).all() and (per_cell[:, j] <= hi).all()
    y0, params = Case(problem_c, 37, 26, 50.0, cells=c).solver_inputs()
    np.testing.assert_allclose(y0[:, 0], c["u0"]) and np.testing.assert_allclose(params["I"], c["I"])
    assert Case(problem_c, 37, 26, 50.0).save_every == 200 and list(kept_times(50.0, 1)) == [50.0]
    with pytest.raises(InvalidInputError, match="K = 7 kept states need K - 1 = 6 to divide the 5000 steps"):
        Case(problem_c, 37, 7, 50.0).save_every


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch_cuda", "torch_compile", "fused", "tensorrt", "onnxruntime_cuda"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_backends_agree_with_torch(backend, precision, net, tmp_path, problem_c):
    b = REGISTRY[backend]
    if b.unavailable_reason() is not None:
        pytest.skip(b.unavailable_reason())
    if precision not in b.precisions:
        pytest.skip(f"{backend} has no {precision}")
    X, _ = direct_rows(problem_c, 2000, 26)
    check_against_torch(net, b.prepare(net, precision, tmp_path), X, precision, backend)  # raises past tolerance


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_torch_copies_keep_inputs_and_scaling_in_float32(net, precision, problem_c):
    """The torch backends' fp16/bf16 networks: float32 in and out, the input and output scaling in float32
    (a whole-network cast rounds the raw inputs first: ~0.1 of the output range in bf16 on this net)."""
    from inference.export import inference_copy, model_copy, torch_dtype

    X, _ = direct_rows(problem_c, 2000, 26)
    ref = reference_outputs(net, X)
    mixed = inference_copy(net, precision)
    with torch.no_grad():
        y = mixed(torch.as_tensor(X))
        whole = model_copy(net, precision)(torch.as_tensor(X, dtype=torch_dtype(precision))).float()
    assert y.dtype == torch.float32 and next(mixed.m.net.parameters()).dtype == torch_dtype(precision)
    assert mixed.m.in_center.dtype == torch.float32 and net.net[0].weight.dtype == torch.float32  # original kept
    span = ref.max(0) - ref.min(0)
    err, err_whole = (float((np.abs(v.numpy() - ref) / span).max()) for v in (y, whole))
    assert err <= 0.75 * err_whole and err <= TOLERANCE[precision]


@pytest.mark.parametrize("act", sorted(__import__("surrogates.network", fromlist=["x"]).ACTIVATIONS))
@pytest.mark.parametrize("out_act", [None, "Sigmoid"])
def test_the_tiled_cpu_path_computes_the_module_for_every_activation(act, out_act):
    """TiledMLP (the CPU torch backend) equals model(x) in float64 with input and output scaling folded into
    the end layers, at row counts that are not multiples of the tile and at a single row."""
    from inference.backends import TiledMLP

    torch.manual_seed(1)
    net = MLP(3, 2, [(act, 16), ("Tanh", 8)], output_activation=out_act, input_range=([0, -0.1, 0.08], [50, 0.81, 0.12]),
              output_center=[0.4, 0.1], output_scale=[0.6, 0.1]).double().eval()
    x = torch.rand(1000, 3, dtype=torch.float64) * torch.tensor([50, 0.9, 0.04], dtype=torch.float64) \
        + torch.tensor([0, -0.1, 0.08], dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    for tile in (64, 333, 4096):
        got = TiledMLP(net, "fp64", tile=tile)(x)
        assert got.dtype == torch.float64 and got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(TiledMLP(net, "fp64", tile=7)(x[:1]), ref[:1], rtol=1e-12, atol=1e-12)
    assert TiledMLP(net, "fp64")(x[:0]).shape == (0, 2)
    assert net.net[0].weight.dtype == torch.float64  # the model itself is untouched


def test_the_cpu_torch_backend_runs_tiles_and_refuses_what_it_cannot(net, problem_c):
    from inference.backends import TiledMLP

    X, _ = direct_rows(problem_c, 50, 26)
    r = REGISTRY["torch"].prepare(net, "fp32", None)
    np.testing.assert_array_equal(r(X), TiledMLP(net, "fp32")(torch.as_tensor(X, dtype=torch.float32)).numpy())
    assert check_against_torch(net, r, X, "fp32", "torch") <= TOLERANCE["fp32"]
    with pytest.raises(InvalidInputError, match="tile"):
        TiledMLP(net, "fp32", tile=0)
    with pytest.raises(InvalidInputError, match="fp32 or fp64"):
        TiledMLP(net, "fp16")


def test_the_faster_cpu_backend_is_picked_per_architecture(net, tmp_path):
    best, rates = fastest_cpu_backend(net, rows=4096, repeats=3, workdir=tmp_path)
    assert set(rates) == {"torch", "onnxruntime"} and all(r > 0 for r in rates.values())
    assert rates[best] == max(rates.values())


def test_large_workloads_are_evaluated_in_bounded_chunks(net, monkeypatch, problem_c):
    monkeypatch.setattr(workloads, "CHUNK_ROWS", 1000)
    X, _ = direct_rows(problem_c, 97, 26)  # 2522 rows -> 3 calls
    r = REGISTRY["torch"].prepare(net, "fp32", None)
    parts = workloads.run_chunked(r, r.device_input(X))
    assert [len(p) for p in parts] == [1000, 1000, 522]
    np.testing.assert_array_equal(np.concatenate([r.to_host(p) for p in parts]), r(X))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_direct_networks_end_to_end_job_starts_from_the_cells_as_the_solvers(net, backend, monkeypatch, problem_c):
    """The rows built from the cells and kept times where the network runs (NumPy, torch) are the workload's
    rows bit for bit, and the whole job from cells to host outputs gives the network's outputs on them, in
    calls of whole cells (here 38 cells of 26 rows to a call of at most 1,000)."""
    import torch as _torch

    case = Case(problem_c, 97, 26, 50.0)
    X = case.direct_rows()
    cells, times = case.cell_inputs()
    assert cells.shape == (97, 3) and times.shape == (26, 1)
    by_hand = np.stack([np.tile(case.kept_times(), 97)] + [np.repeat(case.cells[c], 26) for c in ("u0", "w0", "I")],
                       axis=1).astype(np.float32)  # t, then each cell's inputs, cell-major
    np.testing.assert_array_equal(X, by_hand)
    np.testing.assert_array_equal(workloads.direct_rows_of(cells, times), X)
    np.testing.assert_array_equal(workloads.direct_rows_of(_torch.as_tensor(cells), _torch.as_tensor(times)).numpy(), X)
    monkeypatch.setattr(workloads, "CHUNK_ROWS", 1000)
    r = REGISTRY[backend].prepare(net, "fp32", None if backend == "torch" else problem_c and __import__("tempfile").mkdtemp())
    parts = workloads.run_from_cells(r, cells, times)
    assert [len(p) for p in parts] == [988, 988, 546] and all(isinstance(p, np.ndarray) for p in parts)
    np.testing.assert_allclose(np.concatenate(parts), r(X), rtol=1e-6, atol=1e-7)
    last = workloads.run_from_cells(r, cells, times, starts=[76])
    np.testing.assert_allclose(last[0], r(X[76 * 26:]), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- the iterative (ITNN) workload
@pytest.fixture(scope="module")
def step_net():
    """An increment network of problem D: [u, w, I] -> [du, dw] (small, so a rollout stays bounded)."""
    torch.manual_seed(1)
    return MLP(3, 2, [("Tanh", 16), ("Tanh", 16)], input_range=([-0.1, 0.0, 0.08], [1.0, 0.2, 0.12]),
               output_center=[0.0, 0.0], output_scale=[0.01, 0.001]).eval()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_rollout_through_a_runner_matches_the_itnn_rollout(step_net, backend, tmp_path, monkeypatch):
    from surrogates.itnn import rollout

    cfg = load_config()
    d, c_problem = cfg.problem("D"), cfg.problem("C")
    case = Case(c_problem, 37, 2, 50.0)
    c = case.cells
    Y0, P = case.rollout_inputs(d)
    assert Y0.shape == (37, 2) and P.shape == (37, 1)
    np.testing.assert_array_equal(P[:, 0], c["I"].astype(np.float32))  # real, per-cell currents
    assert len(np.unique(Y0[:, 0])) == 37
    ref = rollout(step_net, Y0, P, n_steps=40, keep_every=8)  # (6, 37, 2): y0 and 5 kept states
    monkeypatch.setattr(workloads, "CHUNK_ROWS", 16)  # 3 chunks of cells
    r = REGISTRY[backend].prepare(step_net, "fp32", tmp_path)
    kept = workloads.rollout_runner(r, Y0, P, n_steps=40, keep_every=8, keep_first=True)
    assert len(kept) == 3 * 6
    got = np.stack([np.concatenate([r.to_host(k) for k in kept[j::6]]) for j in range(6)])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    final_only = workloads.rollout_runner(r, Y0, P, n_steps=40, keep_every=40, keep_first=False)
    np.testing.assert_allclose(np.concatenate([r.to_host(k) for k in final_only]), ref[-1], rtol=1e-5, atol=1e-6)
    # a clock (a paced model's time input) advances its column each step, as the ITNN rollout's does: here the
    # current stands in for the time
    ref_t = rollout(step_net, Y0, P, n_steps=40, keep_every=8, clock=(0, 1e-3))
    assert np.abs(ref_t - ref).max() > 1e-5 and np.array_equal(P[:, 0], c["I"].astype(np.float32))  # P untouched
    timed = workloads.rollout_runner(r, Y0, P, n_steps=40, keep_every=8, keep_first=True, clock=(0, 1e-3))
    got_t = np.stack([np.concatenate([r.to_host(k) for k in timed[j::6]]) for j in range(6)])
    np.testing.assert_allclose(got_t, ref_t, rtol=1e-5, atol=1e-6)


def test_speed_run_times_an_itnn_by_rollout_on_the_same_k_states(step_net, tmp_path):
    cfg = speed_cfg(n_cells=[300], n_outputs=26, k_sweep=[2501])
    path = save_as(step_net, tmp_path / "D/itnn/best_model.pth", cfg, "D", "itnn")
    df = speedup.run(cfg, {"itnn": path}, ["torch", "onnxruntime"], ["fp32"], workdir=tmp_path / "w")
    timed = df[df.skipped.isna()]
    assert set(timed.backend) == {"torch", "onnxruntime"} and (timed.n_outputs == 26).all()
    assert timed.workload.str.startswith("iterative rollout").all()
    assert (timed.rows == 300 * 500).all() and (timed.speedup > 0).all() and (timed.mae == 0.01).all()
    # what each row cost the benchmark: at least its two timed repeats (2 x their median), besides warm-up
    assert (timed.wall_s >= 0.999 * 2 * timed.surrogate_seconds).all() and (timed.solver_wall_s > 0).all()
    skipped = df[df.skipped.notna()]
    assert (skipped.n_outputs == 2501).all() and skipped.skipped.str.contains("K - 1 = 2500 to divide the 500 steps").all()


def test_a_cpu_rollout_warms_up_on_one_step_of_each_chunk(step_net, tmp_path, monkeypatch):
    """N = 300 cells in chunks of 128: the warm-up is one step of each chunk (128, 128, 44 rows), not a whole
    500-step rollout; each timed rollout is all 500 steps of every chunk."""
    monkeypatch.setattr(workloads, "CHUNK_ROWS", 128)
    sizes = recording_backend(monkeypatch)
    cfg = speed_cfg(n_cells=[300], n_outputs=26, k_sweep=[], repeats=3, max_repeats=3)
    path = save_as(step_net, tmp_path / "D/itnn/best_model.pth", cfg, "D", "itnn")
    df = speedup.run(cfg, {"itnn": path}, ["recording"], ["fp32"], workdir=tmp_path / "w")
    row = df[df.skipped.isna() & df.failed.isna()]
    assert len(row) == 1 and int(row.kernel_repeats.iloc[0]) == 3
    rollout = [128] * 500 + [128] * 500 + [44] * 500
    assert sizes[-3 * len(rollout):] == rollout * 3  # the three timed rollouts
    assert sizes[-3 * len(rollout) - 3:-3 * len(rollout)] == [128, 128, 44]  # the warm-up before them


def test_a_speed_run_with_no_backend_that_can_run_here_is_an_error(net, tmp_path):
    cfg = speed_cfg(n_cells=[100], k_sweep=[])
    path = save_as(net, tmp_path / "C/ddnn/best_model.pth", cfg, "C", "ddnn")
    with pytest.raises(InvalidInputError, match="no speed backend can run on this machine: tensorrt: "):
        speedup.run(cfg, {"ddnn": path}, ["tensorrt"], ["fp32"], workdir=tmp_path / "w")
    assert speedup.backends_for(["torch_cuda", "torch", "fused"], "cpu") == ["torch"]
    assert speedup.backends_for(["torch_cuda", "torch"], "cuda") == ["torch_cuda", "torch"]
    with pytest.raises(InvalidInputError, match=r"unknown speed backend\(s\) \['tourch'\]"):
        speedup.backends_for(["tourch"], "cpu")


def test_a_speed_run_stops_measuring_when_its_time_budget_is_spent(net, tmp_path, monkeypatch):
    """speed.time_budget_s: the measurement that crosses the budget finishes; every later one (the rest of that
    point, and whole later points) is a row skipped with the reason, so the run ends and its table is written."""
    from inference import backends as B

    class Sleepy(B.TorchEager):
        def __init__(self):
            super().__init__("cpu")
            self.name = "sleepy"

        def prepare(self, model, prec, workdir):
            time.sleep(1.5)  # past the budget below
            return super().prepare(model, prec, workdir)

    monkeypatch.setitem(REGISTRY, "sleepy", Sleepy())
    cfg = speed_cfg(n_cells=[100, 200], k_sweep=[2], time_budget_s=1.0)
    path = save_as(net, tmp_path / "C/ddnn/best_model.pth", cfg, "C", "ddnn")
    df = speedup.run(cfg, {"ddnn": path}, ["sleepy", "torch"], ["fp32"], workdir=tmp_path / "w")
    timed = df[df.skipped.isna() & df.failed.isna()]
    assert len(timed) == 1 and timed.backend.iloc[0] == "sleepy" and timed.n_cells.iloc[0] == 100
    skipped = df[df.skipped.fillna("").str.contains("time budget of this run was spent")]
    assert ((skipped.n_cells == 100) & (skipped.backend == "torch")).sum() == 1  # the rest of the first point
    assert set(zip(skipped.n_cells, skipped.n_outputs)) == {(100, 26), (200, 26), (100, 2)}
    with pytest.raises(InvalidInputError, match="time_budget_s"):
        validate_config(merge(load_config().as_dict(), {"speed": {"time_budget_s": 0}}))


def test_a_failing_backend_is_recorded_and_the_others_go_on(net, tmp_path, monkeypatch):
    """A backend that cannot prepare, one that mismatches and one past its time limit each give failed rows
    with the reason; every other row is measured, and the program exits non-zero at the end."""
    from inference import backends as B

    class Broken(B.TorchEager):
        def __init__(self, name, mode):
            super().__init__("cpu")
            self.name, self.mode = name, mode

        def prepare(self, model, prec, workdir):
            if self.mode == "raise":
                raise RuntimeError("cannot build an engine here")
            r = super().prepare(model, prec, workdir)
            if self.mode == "wrong":
                return B.Runner(r.device_input, lambda x: r.run(x) * 1.5, r.to_host)
            import time as _t

            return B.Runner(r.device_input, lambda x: (_t.sleep(1.0), r.run(x))[1], r.to_host)

    for name, mode in (("broken", "raise"), ("wrong", "wrong"), ("slow", "slow")):
        monkeypatch.setitem(B.REGISTRY, name, Broken(name, mode))
    cfg = speed_cfg(n_cells=[300], k_sweep=[1], backend_time_limit_s=3.0)
    path = save_as(net, tmp_path / "m" / "best_model.pth", cfg, "C", "ddnn")
    df = speedup.run(cfg, {"ddnn": path}, ["torch", "broken", "wrong", "slow"], ["fp32"], workdir=tmp_path / "w")
    failed = df[df.failed.notna()].groupby("backend").failed.first()
    assert "cannot build an engine here" in failed["broken"]
    assert "differs from eager torch" in failed["wrong"]
    assert "time limit of 3 s" in failed["slow"]
    ok = df[df.failed.isna() & df.skipped.isna()]
    assert set(ok.backend) == {"torch"} and len(ok) == 2 and (ok.speedup > 0).all()  # (300, 26) and (300, 1)
    monkeypatch.setattr(speedup, "configured_models", lambda cfg: {"ddnn": path})
    monkeypatch.setattr(speedup, "configured_ensembles", lambda cfg: {})
    cfg_file = tmp_path / "c.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "r"), "speed": {
        "n_cells": [300], "k_sweep": [1], "repeats": 2, "max_repeats": 2, "backend_time_limit_s": 1.0,
        "backends": ["torch", "onnxruntime"], "precisions": ["fp32"]}}))
    assert speedup.main(["--config", str(cfg_file), "--backends", "torch", "broken", "--precisions", "fp32"]) == 1
    assert (tmp_path / "r/benchmarks/speed_raw.csv").exists()


def test_the_gpu_check_steps_that_are_not_cuda_specific_run_on_a_cpu(tmp_path):
    """`make gpu-check` gets minutes on a GPU machine: its training, network and speed steps are run here on
    the CPU (tiny sizes), so a mistake in them is found before that."""
    from benchmarks import gpu_check
    from core.config import merge

    cfg = merge(load_config().as_dict(), {"results_dir": str(tmp_path / "r"), "datasets": {"sizes": [300]},
                                "problems": {"C": {"test_trajectories": 10}},
                                "speed": {"n_cells": [200], "k_sweep": [1], "repeats": 2, "max_repeats": 2}})
    from surrogates.config import validate_config

    cfg = validate_config(cfg)
    budget = gpu_check.Budget(600)
    summary = gpu_check.training(cfg, tmp_path, budget, device="cpu", iters=60)
    assert "fused engine, CUDA graph" in summary and (tmp_path / "training.csv").exists()
    models, ensembles = gpu_check.networks(cfg, budget, iterations=20)
    assert set(models) == {"ddnn", "itnn"} and all(p.exists() for p in models.values())
    assert list(ensembles) == ["ddnn"] and len(ensembles["ddnn"]) == 3 and ensembles["ddnn"][0] == models["ddnn"]
    text = gpu_check.speed(cfg, models, tmp_path, budget, backends=["torch"], ensembles=ensembles)
    assert "kernel speedup" in text and "ddnn_ensemble (torch fp32) end to end" in text
    assert (tmp_path / "speed_raw.csv").exists()


def test_the_gpu_checks_grid_and_lbfgs_steps_run_on_a_cpu(tmp_path):
    """The grid step (one real job per (problem, surrogate), the seeds as a cohort, the grid's trainings
    estimated from them) and the L-BFGS comparison, at tiny sizes on the CPU."""
    import pandas as pd

    from benchmarks import gpu_check
    from core.config import merge
    from surrogates.config import validate_config

    cfg = merge(load_config().as_dict(), {
        "results_dir": str(tmp_path / "r"), "datasets": {"sizes": [300]},
        "problems": {"C": {"test_trajectories": 10}, "hh_m": {"sizes": [300], "t_end": 20.0}},
        "training": {"iterations": 30, "val_every": 10, "seeds": [0, 1],
                     "overrides": {"hh_m": {"iterations": 5, "lbfgs_iterations": 20, "val_every": 5}}}})
    cfg["training"]["surrogates"] = {"ddnn": ["C"], "itnn": ["D"]}
    cfg["speed"]["surrogates"] = ["ddnn", "itnn"]
    cfg = validate_config(cfg)
    text = gpu_check.grid(cfg, tmp_path, gpu_check.Budget(600), reserve=0, wide_iterations=20)
    df = pd.read_csv(tmp_path / "grid.csv")
    assert list(zip(df.problem, df.surrogate, df.arch, df.seeds.astype(str))) == [
        ("C", "ddnn", "mlp3x64", "0"), ("C", "ddnn", "mlp3x64", "0 1"), ("D", "itnn", "mlp3x64", "0"),
        ("D", "itnn", "silu4x128", "0 1")]
    assert (df.device == "cpu").all() and (df.iterations == [30, 30, 30, 20]).all() and df.test_mae.notna().all()
    n = len(cfg.training_grid())
    assert n == 4 and f"the {n} of {n} grid trainings" in text and "as a cohort of 2" in text
    stated = float(text.split("one after the other: ")[1].split(" s")[0])
    lone = df[df.seeds.astype(str) == "0"]
    assert stated == pytest.approx(2 * lone.per_network_s.sum(), abs=1)  # each class's job, twice (2 seeds)
    out = gpu_check.lbfgs(cfg, tmp_path, gpu_check.Budget(600), iterations=20)
    for key in ("ddnn torch", "ddnn ours ", "ddnn ours+graph", "pinn_seed torch", "pinn_seed ours ", "pinn_seed ours+graph"):
        assert key in out


# ---------------------------------------------------------------- seed ensembles, timed as surrogates of their own
def ensemble_cfg(tmp_path, **speed):
    """Problem C and D with a small architecture of their own, results under tmp_path."""
    return validate_config(merge(speed_cfg(**speed).as_dict(), {"results_dir": str(tmp_path / "results"), "training": {
        "architecture": "tiny", "architectures": {"tiny": [["SiLU", 16], ["Tanh", 16]]}}}))


def save_members(cfg, problem, kind, n_inputs, seeds=(0, 1, 2), scale=1.0):
    """A trained-looking network for each seed, saved where the workflow keeps them (largest n)."""
    from core.layout import Layout

    p = cfg.problem(problem)
    n, layout, paths = max(p.sizes), Layout(cfg.results_dir), []
    for s in seeds:
        torch.manual_seed(100 + s)
        net = MLP(n_inputs, 2, [("SiLU", 16), ("Tanh", 16)], output_scale=[scale, scale]).eval()
        path = layout.run_file("model", problem, kind, n, "tiny", s)
        save_checkpoint(net, path, meta={"provenance": expected_model(cfg, problem, kind, n, s, "tiny")})
        paths.append(path)
    return paths


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_an_ensemble_runner_computes_the_mean_of_its_networks(net, backend, tmp_path, problem_c):
    from inference.backends import ensemble_runner
    from surrogates.ensemble import Ensemble

    torch.manual_seed(3)
    members = [net] + [MLP(4, 2, [("SiLU", 32), ("Sigmoid", 32), ("Tanh", 16)]).eval() for _ in range(2)]
    X, _ = direct_rows(problem_c, 200, 26)
    r = ensemble_runner([REGISTRY[backend].prepare(m, "fp32", tmp_path / str(i)) for i, m in enumerate(members)])
    with torch.no_grad():
        want = Ensemble(members)(torch.as_tensor(X)).numpy()
        one = members[0](torch.as_tensor(X)).numpy()
    got = r(X)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(got - one).max() > 1e-2  # the mean, not its first member
    with pytest.raises(InvalidInputError, match="at least 2 member runners"):
        ensemble_runner([REGISTRY[backend].prepare(net, "fp32", tmp_path / "solo")])


def test_an_ensemble_rolls_out_with_the_mean_increment_of_its_networks(tmp_path):
    """Through a runner, step by step, an ITNN ensemble is surrogates.ensemble's rollout (the mean increment at
    every step), not the mean of its members' rollouts."""
    from inference.backends import ensemble_runner
    from surrogates.ensemble import Ensemble
    from surrogates.itnn import rollout

    cfg = load_config()
    d, c = cfg.problem("D"), cfg.problem("C")
    torch.manual_seed(5)
    members = [MLP(3, 2, [("Tanh", 16)], input_range=([-0.1, 0.0, 0.08], [1.0, 0.2, 0.12]),
                   output_scale=[0.02, 0.002]).eval() for _ in range(3)]
    Y0, P = Case(c, 25, 6, 50.0).rollout_inputs(d)
    want = rollout(Ensemble(members), Y0, P, n_steps=30, keep_every=6)
    r = ensemble_runner([REGISTRY["torch"].prepare(m, "fp32", tmp_path) for m in members])
    kept = workloads.rollout_runner(r, Y0, P, n_steps=30, keep_every=6, keep_first=True)
    got = np.stack([r.to_host(k) for k in kept])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    mean_of_rollouts = np.mean([rollout(m, Y0, P, n_steps=30, keep_every=6) for m in members], axis=0)
    assert np.abs(mean_of_rollouts - want).max() > 1e-6  # the two differ: this is the right one


def test_the_speed_benchmark_times_seed_ensembles_at_the_papers_point(tmp_path):
    """An ensemble gets a row of its own (<kind>_ensemble) at the first N of the N sweep only, on the backend
    that ran one network of its kind fastest there, with the MAE its accuracy row has; its members are
    checked to be the configured runs."""
    from core.layout import Layout
    from surrogates import ensemble as ens

    cfg = ensemble_cfg(tmp_path, n_cells=[300, 600], n_outputs=26, k_sweep=[1])
    ddnn = save_members(cfg, "C", "ddnn", 4)
    itnn = save_members(cfg, "D", "itnn", 3, scale=0.01)
    n_c = max(cfg.problem("C").sizes)
    score = Layout(cfg.results_dir).ensemble_file("C", "ddnn", n_c, "tiny")
    score.parent.mkdir(parents=True)
    write_record(score, {"provenance": ens.expected_ensemble(cfg, "C", "ddnn", n_c, "tiny", [0, 1, 2]), "mae": 0.0042})
    df = speedup.run(cfg, {"ddnn": ddnn[0], "itnn": itnn[0]}, ["torch", "onnxruntime"], ["fp32"],
                     workdir=tmp_path / "w", ensembles={"ddnn": ddnn, "itnn": itnn})
    timed = df[df.skipped.isna() & df.failed.isna()]
    e = timed[timed.surrogate.str.endswith("_ensemble")]
    assert sorted(e.surrogate) == ["ddnn_ensemble", "itnn_ensemble"]
    at = timed[(timed.n_cells == 300) & (timed.n_outputs == 26)]
    for kind in ("ddnn", "itnn"):
        fastest = at[at.surrogate == kind].sort_values("surrogate_seconds").backend.iloc[0]
        assert e[e.surrogate == kind + "_ensemble"].backend.item() == fastest
    assert (e.n_cells == 300).all() and (e.n_outputs == 26).all() and (e.speedup > 0).all()
    assert (e[e.surrogate == "ddnn_ensemble"].mae == 0.0042).all()  # its own score
    assert e[e.surrogate == "itnn_ensemble"].mae.isna().all()  # not scored: no number is made up
    assert (e.max_rel_diff_vs_torch < 1e-4).all()
    singles = timed[~timed.surrogate.str.endswith("_ensemble")]
    assert {(300, 26), (600, 26), (300, 1)} <= set(zip(singles.n_cells, singles.n_outputs))
    # a member that is not the configured run (another seed's file twice) is refused before any timing
    from core.errors import PipelineError

    with pytest.raises(PipelineError, match="repeat a seed"):
        speedup.run(cfg, {"ddnn": ddnn[0]}, ["torch"], ["fp32"], workdir=tmp_path / "w2",
                    ensembles={"ddnn": [ddnn[0], ddnn[0]]})


def test_configured_ensembles_follow_the_grids_ensembles(tmp_path):
    cfg = ensemble_cfg(tmp_path)
    got = cfg.speed_ensembles()
    assert [(k, p, a, s) for k, p, _, a, s in got] == [("ddnn", "C", "tiny", (0, 1, 2)), ("itnn", "D", "tiny", (0, 1, 2))]
    one_seed = validate_config(merge(cfg.as_dict(), {"training": {"seeds": [0]}}))
    assert one_seed.speed_ensembles() == []  # no ensemble of one network
    assert validate_config(merge(cfg.as_dict(), {"training": {"ensemble": False}})).speed_ensembles() == []
    with pytest.raises(InvalidInputError, match=r"speed.ensembles.1: 'pinn_seed' is not one of speed.surrogates"):
        validate_config(merge(cfg.as_dict(), {"speed": {"ensembles": ["ddnn", "pinn_seed"]}}))
    with pytest.raises(InvalidInputError, match="lacks trained members"):
        speedup.configured_ensembles(cfg)
