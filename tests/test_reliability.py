"""Every artefact knows what it was made for; wrong inputs fail early and clearly; one run per folder.

Each reliability probe is a test here, on the tiny preset (conftest.TINY): a dataset, a
checkpoint or a metrics file used for something else than it was made for is refused before any work,
naming the file and the differing key; settings that cannot work fail when the configuration loads;
OS errors on write name the path; two runs on one results folder, however it is spelt, cannot both start.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml
import solvers
from conftest import ROOT, snakemake_cmd, tiny
from core import io as core_io
from core.errors import InvalidInputError, ProvenanceError, WriteError
from core.layout import Layout
from core.lock import FolderBusyError, FolderLock
from surrogates import datasets as ds
from surrogates.network import load_checkpoint, save_checkpoint
from surrogates.study import Study
from surrogates.scoring import expected_model
from training.train import main as train_main, train_surrogate

ARCH = "mlp3x64"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Datasets of B, C (n = 300 and 1000) and D, and briefly trained B, C and D models, in one results folder."""
    root = tmp_path_factory.mktemp("world") / "results"
    cfg = tiny(root, datasets={"sizes": [300, 1000]})
    lay = Layout(root)
    for p in ("B", "C", "D"):
        ds.write_test(cfg, p, lay.test(p))
        for n in (300, 1000):
            ds.write_split(cfg, p, n, lay.split(p, n, "train"), lay.split(p, n, "val"))
    for p, kind in (("B", "ddnn"), ("C", "ddnn"), ("D", "itnn")):
        train_surrogate(cfg, p, kind, 300, 0, lay.dataset_dir(p), lay.model_dir(p, kind, 300, ARCH, 0), iterations=5)
    return cfg, lay


def fresh(world, tmp_path, *problems) -> tuple[Study, Layout]:
    """A private copy of the world's datasets and models (tests change files)."""
    cfg, lay = world
    new = Layout(tmp_path / "results")
    shutil.copytree(lay.root, new.root)
    return Study.of({**cfg.as_dict(), "results_dir": str(new.root)}, cfg.problems), new


# ---------------------------------------------------------------- datasets used for something else
def test_another_problems_test_set_is_refused_before_training(world, tmp_path):
    cfg, lay = fresh(world, tmp_path)
    for ext in ("npz", "json"):  # B's test set and sidecar put in place of C's
        shutil.copy(lay.test("B").with_suffix(f".{ext}"), lay.test("C").with_suffix(f".{ext}"))
    out = tmp_path / "run"
    with pytest.raises(ProvenanceError) as err:
        train_surrogate(cfg, "C", "ddnn", 300, 0, lay.dataset_dir("C"), out, iterations=50)
    msg = str(err.value)
    assert str(lay.test("C")) in msg and "problem = 'B'" in msg and "problem = 'C'" in msg
    assert not (out / "losses.csv").exists(), "training ran before the test set was checked"


def test_a_training_set_of_another_size_is_refused(world, tmp_path):
    cfg, lay = fresh(world, tmp_path)
    for part in ("train", "val"):  # C's n = 1000 files put where n = 300 is expected
        for ext in ("npz", "json"):
            shutil.copy(lay.split("C", 1000, part).with_suffix(f".{ext}"), lay.split("C", 300, part).with_suffix(f".{ext}"))
    with pytest.raises(ProvenanceError, match=r"train\.npz was made for n = 1000\.0, but it is used for n = 300"):
        train_surrogate(cfg, "C", "ddnn", 300, 0, lay.dataset_dir("C"), tmp_path / "run", iterations=5)


def test_an_edited_sidecar_is_refused(world, tmp_path):
    cfg, lay = fresh(world, tmp_path)
    side = lay.sidecar(lay.split("C", 300, "train"))
    meta = json.loads(side.read_text())
    meta["dt"], meta["problem"]["ranges"]["I"] = 0.02, [0.0, 0.5]  # the arrays are untouched
    side.write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match=r"train\.json was changed after it was written"):
        train_surrogate(cfg, "C", "ddnn", 300, 0, lay.dataset_dir("C"), tmp_path / "run", iterations=5)


def test_an_edited_test_sidecar_never_reaches_the_accuracy_table(world, tmp_path):
    from benchmarks.tables import accuracy_table

    cfg, lay = fresh(world, tmp_path)
    c = cfg.as_dict()
    cfg = Study.of({**c, "training": {**c["training"], "surrogates": {"ddnn": ["B", "C"]}},
                    "datasets": {**c["datasets"], "sizes": [300]}})
    metrics = [lay.run_file("metrics", p, "ddnn", 300, ARCH, 0) for p in ("B", "C")]
    sidecars = [lay.sidecar(lay.test(p)) for p in ("B", "C")]
    table = accuracy_table(metrics, sidecars, cfg)
    assert sorted(table[table.surrogate == "euler_floor"].problem) == ["B", "C"]
    meta = json.loads(sidecars[1].read_text())
    meta["euler_floor"]["mae"], meta["provenance"]["problem"] = 1.234e-9, "B"
    sidecars[1].write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match=r"C/test\.json was changed after it was written"):
        accuracy_table(metrics, sidecars, cfg)


def test_a_metrics_file_of_another_run_is_refused_by_the_table(world, tmp_path):
    from benchmarks.tables import accuracy_table

    cfg, lay = fresh(world, tmp_path)
    c = cfg.as_dict()
    cfg = Study.of({**c, "training": {**c["training"], "surrogates": {"ddnn": ["B", "C"]}},
                    "datasets": {**c["datasets"], "sizes": [300]}})
    metrics = [lay.run_file("metrics", p, "ddnn", 300, ARCH, 0) for p in ("B", "C")]
    shutil.copy(metrics[0], metrics[1])  # B's metrics where C's should be
    with pytest.raises(ProvenanceError, match=r"C/ddnn/n300/mlp3x64/seed0/metrics\.json was made for problem = 'B'"):
        accuracy_table(metrics, [lay.sidecar(lay.test(p)) for p in ("B", "C")], cfg)


# ---------------------------------------------------------------- checkpoints used for something else
def test_a_checkpoint_of_another_problem_is_refused_by_export_and_speed(world, tmp_path):
    from benchmarks import speedup

    cfg, lay = fresh(world, tmp_path)
    b = lay.run_file("model", "B", "ddnn", 300, ARCH, 0)
    for kind, problem in (("itnn", "D"), ("ddnn", "C")):  # same shape (3 -> 2) and a different one (3 vs 4 inputs)
        target = lay.run_file("model", problem, kind, 300, ARCH, 0)
        shutil.copy(b, target)
        with pytest.raises(ProvenanceError) as err:  # what the export rule asks
            load_checkpoint(target, expect=expected_model(cfg, problem, kind, 300, 0, ARCH))
        assert str(target) in str(err.value) and "problem = 'B'" in str(err.value)
    with pytest.raises(ProvenanceError, match="problem = 'B'"):  # the speed benchmark times nothing mislabelled
        speedup.load_surrogates(cfg, {"itnn": lay.run_file("model", "D", "itnn", 300, ARCH, 0)})


# ---------------------------------------------------------------- settings that cannot work fail at load
@pytest.mark.parametrize("extra,message", [
    ({"speed": {"n_outputs": 7}}, r"config key speed\.n_outputs \(the Euler steps of speed\.t_end = 50 at solver\.dt = 0\.01\): K = 7 kept states need K - 1 = 6 to divide the 5000"),
    ({"speed": {"k_sweep": [1, 26, 4]}}, r"config key speed\.k_sweep\.2 \(.*\): K = 4"),
    ({"problems": {"A": {"sizes": [5000]}}}, r"config key problems\.A\.sizes: n = 5000 is larger than problem A's design"),
    ({"training": {"seeds": [-1]}}, r"config key training\.seeds\.0: -1 is less than the minimum of 0"),
    ({"training": {"seeds": [10**20]}}, r"config key training\.seeds\.0: .* is greater than the maximum"),
    ({"problems": {"D": {"step": 0.03}}}, r"config key problems\.D\.step"),
    ({"training": {"overrides": {"hh_m": {"lbfgs_dtype": "float16"}}}},
     r"config key training\.overrides\.hh_m\.lbfgs_dtype: 'float16' is not one of \['float32', 'float64', 'auto'\]"),
])
def test_settings_that_cannot_work_fail_when_the_config_loads(extra, message, tmp_path):
    with pytest.raises(InvalidInputError, match=message):
        tiny(tmp_path, **extra)


# ---------------------------------------------------------------- clear errors at the edges
def test_a_full_disk_names_the_file_and_leaves_nothing_half_written(tmp_path, full_disk):
    from surrogates.network import MLP

    model = MLP(2, 1, [("Tanh", 8)])
    path = tmp_path / "best_model.pth"
    save_checkpoint(model, path)
    before = path.read_bytes()
    full_disk()
    with pytest.raises(WriteError) as err:
        save_checkpoint(model, path)
    assert f"cannot write {path}: no space left on device" in str(err.value)
    assert isinstance(err.value, OSError) and err.value.errno_code == errno.ENOSPC
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_generated_source_is_stored_whole_and_imported(tmp_path):
    """core.io.import_generated (the Numba and Triton kernels' loader): the file holds the source (a stale one
    is replaced, atomically), the module is importable by name, and a second load reads the same file."""
    import sys

    path = tmp_path / "gen" / "k.py"
    path.parent.mkdir()
    path.write_text("VALUE = 0  # stale")
    m = core_io.import_generated("VALUE = 41\n\ndef f():\n    return VALUE + 1\n", path, "_test_generated_k")
    assert m.f() == 42 and sys.modules["_test_generated_k"] is m and path.read_text().startswith("VALUE = 41")
    assert not list(path.parent.glob(".*tmp"))  # no temporary left behind
    again = core_io.import_generated("VALUE = 41\n\ndef f():\n    return VALUE + 1\n", path, "_test_generated_k2")
    assert again.f() == 42 and again is not m


def test_the_training_cli_takes_zero_iterations_literally_and_rejects_bad_seeds(world, tmp_path, capsys):
    cfg, lay = world
    cfgfile = tmp_path / "tiny.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg.as_dict()))
    out = tmp_path / "zero"
    args = ["--config", str(cfgfile), "--problem", "B", "--surrogate", "ddnn", "--n", "300",
            "--data", str(lay.dataset_dir("B")), "--out", str(out)]
    import torch

    threads = torch.get_num_threads()
    try:  # --threads as the workflow's rule sets a job's threads (after scoring too: describing the machine)
        assert train_main([*args, "--iterations", "0", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 0 and m["best_iteration"] == 0 and np.isfinite(m["mae"])
    with pytest.raises(SystemExit):
        train_main([*args, "--threads", "0"])
    assert "--threads must be" in capsys.readouterr().err
    for bad, message in (("-1", "--seed must be between 0 and 4294967295, got -1"),
                         ("1e20", "--seed takes an integer, got '1e20'"),
                         (str(10**20), "--seed must be between 0 and 4294967295")):
        with pytest.raises(SystemExit) as exit_:
            train_main([*args, "--seed", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_the_training_cli_trains_several_seeds_together_into_one_folder_each(world, tmp_path, capsys):
    cfg, lay = world
    cfgfile = tmp_path / "tiny.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg.as_dict()))
    args = ["--config", str(cfgfile), "--problem", "B", "--surrogate", "ddnn", "--n", "300",
            "--data", str(lay.dataset_dir("B")), "--iterations", "30", "--seed", "4", "5"]
    assert train_main([*args, "--out", str(tmp_path / "one")]) == 2  # two seeds, one folder: refused, named
    assert "--out must hold {seed}" in capsys.readouterr().err and not (tmp_path / "one").exists()
    assert train_main([*args, "--out", str(tmp_path / "s{seed}")]) == 0
    out = capsys.readouterr().out
    assert "seed=4" in out and "seed=5" in out and "trained with 1 other" in out
    m4, m5 = (json.loads((tmp_path / f"s{s}" / "metrics.json").read_text()) for s in (4, 5))
    assert (m4["seed"], m5["seed"], m4["cohort"], m4["iterations"]) == (4, 5, 2, 30) and m4["mae"] != m5["mae"]


def test_messages_name_columns_without_numpy_noise(world, tmp_path):
    cfg, lay = fresh(world, tmp_path)
    for ext in ("npz", "json"):
        shutil.copy(lay.split("B", 300, "train").with_suffix(f".{ext}"), lay.split("C", 300, "train").with_suffix(f".{ext}"))
    with pytest.raises(ProvenanceError) as err:
        train_surrogate(cfg, "C", "ddnn", 300, 0, lay.dataset_dir("C"), tmp_path / "run", iterations=5)
    assert "np.str_" not in str(err.value)


def test_simulating_zero_cells_says_so():
    with pytest.raises(InvalidInputError, match="y0 holds no cell: give at least one initial state"):
        solvers.simulate("fhn", np.zeros((0, 2)), 1.0)


def test_sidecars_record_the_parameters_really_used(world):
    cfg, lay = world
    c = json.loads(lay.sidecar(lay.split("C", 300, "train")).read_text())
    assert c["parameters"]["I"] == {"sampled": [0.08, 0.12], "units": "1"}
    b = json.loads(lay.sidecar(lay.split("B", 300, "train")).read_text())
    assert b["parameters"]["I"] == 0.08
    p = cfg.problem("hh_m")
    assert p.used_parameters()["I_stim"]["protocol"]["amplitude"] == 10.0


# ---------------------------------------------------------------- one run per folder
def test_one_training_per_folder(world, tmp_path):
    cfg, lay = fresh(world, tmp_path)
    out = tmp_path / "run"
    with FolderLock(tmp_path / "." / "run", what="training folder"):  # another spelling of the same folder
        with pytest.raises(FolderBusyError, match=r"training folder .*run is in use by process"):
            train_surrogate(cfg, "B", "ddnn", 300, 0, lay.dataset_dir("B"), out, iterations=5)
    assert train_surrogate(cfg, "B", "ddnn", 300, 0, lay.dataset_dir("B"), out, iterations=5)["iterations"] == 5


def test_a_half_written_file_of_a_killed_run_is_removed_when_its_folder_is_trained_again(world, tmp_path, capsys):
    """SIGKILL in the middle of an atomic write leaves its temporary (``.checkpoint.pth.<random>.tmp``) in the
    run's folder; the next training of that folder, holding it, removes it and says so. Files that are not
    such temporaries stay."""
    cfg, lay = fresh(world, tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.pth.bi4vsk75.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = out / "notes.txt"
    keep.write_text("mine")
    assert train_surrogate(cfg, "B", "ddnn", 300, 0, lay.dataset_dir("B"), out, iterations=5)["iterations"] == 5
    assert not stale.exists() and keep.read_text() == "mine" and list(out.glob(".*.tmp")) == []
    assert "removed .checkpoint.pth.bi4vsk75.tmp, a file a killed run left half written" in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_workflow_run_on_the_same_folder_spelt_otherwise_refuses_at_once(tiny_config, snakemake, tmp_path):
    cfg = tiny_config({"training": {"overrides": {"C": {"iterations": 20000, "val_every": 100}}}})
    (tmp_path / "alias").symlink_to(tmp_path)
    other = tiny_config({"results_dir": str(tmp_path / "alias" / "results"),
                         "training": {"overrides": {"C": {"iterations": 20000, "val_every": 100}}}}, name="alias.yaml")
    target = Layout(tmp_path / "results").run_file("metrics", "C", "ddnn", 300, ARCH, 0)
    log = open(tmp_path / "first.out", "w")
    first = subprocess.Popen(snakemake_cmd(target, "--cores", "1", "--configfile", "config/quick.yaml", cfg), cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (target.parent / "checkpoint.pth").exists():
            assert first.poll() is None, (tmp_path / "first.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        t0 = time.monotonic()  # results_dir spelt through the alias: keyed on the real path, so the same outputs
        second = snakemake(target, "--cores", "1", "--rerun-incomplete", "--configfile", "config/quick.yaml", other)
        out = second.stdout + second.stderr
        assert second.returncode != 0 and time.monotonic() - t0 < 60, out[-3000:]
        assert ("is in use by process" in out and "results_dir" in out) or "Directory cannot be locked" in out, out[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)


def test_the_workflow_refuses_a_results_folder_held_by_any_other_process(tiny_config, snakemake, tmp_path):
    """The folder lock (not only Snakemake's own, which is per working directory): here held by this process
    through another spelling of the folder, as a run from another checkout would."""
    cfg = tiny_config()
    (tmp_path / "alias").symlink_to(tmp_path)
    with FolderLock(tmp_path / "alias" / "results", what="results_dir"):
        res = snakemake(Layout(tmp_path / "results").test("B"), "--cores", "1", "--configfile", "config/quick.yaml", cfg)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and f"results_dir {tmp_path}/results is in use by process {os.getpid()}" in out, out[-3000:]
    assert not Layout(tmp_path / "results").test("B").exists()


@pytest.mark.parametrize("problem, kind", [("C", "ddnn"), ("D", "itnn")])
def test_a_checkpoint_is_scored_afresh_exactly_as_its_run_scored_it(world, problem, kind):
    """benchmarks.reference --evaluate rebuilds the test set from the config: the same rows, the same errors."""
    from benchmarks.reference import evaluate_checkpoint

    cfg, lay = world
    got = evaluate_checkpoint(lay.run_file("model", problem, kind, 300, ARCH, 0), cfg)
    recorded = json.loads(lay.run_file("metrics", problem, kind, 300, ARCH, 0).read_text())
    assert got["problem"] == problem
    for k in ("mae", "max_abs_err", "rel_l2"):
        assert got[k] == pytest.approx(recorded["test"][k], rel=1e-6)
    assert got["euler_floor_mae"] == pytest.approx(recorded["euler_floor"]["mae"], rel=1e-9)


def test_a_checkpoint_is_not_scored_against_a_changed_problem(world):
    from benchmarks.reference import evaluate_checkpoint

    cfg, lay = world
    changed = cfg.as_dict()
    changed["problems"]["C"]["t_end"] = 30.0
    with pytest.raises(ProvenanceError, match="problem_fingerprint"):
        evaluate_checkpoint(lay.run_file("model", "C", "ddnn", 300, ARCH, 0), Study.of(changed))


# ---------------------------------------------------------------- a benchmark times the threads it asked for
def test_describing_the_machine_keeps_the_thread_count_a_benchmark_set():
    """numba.get_num_threads() starts numba's OpenMP pool, which reset torch's thread count (1 became the
    machine's cores): training_speed set one thread, described its machine and then timed torch's operators
    on every core. machine_info reads numba's count without starting the pool, and where the pool runs (a
    parallel solver ran first) torch's setting is restored. In a fresh process: both are process state."""
    import sys

    code = """
import numpy as np, torch
torch.set_num_threads(1)  # as a benchmark does first (numba not yet imported)
assert torch.get_num_threads() == 1  # OpenMP now initialised in this thread (so is it after any operator)
from core.machine import machine_info

info = machine_info(gpu=False)
assert torch.get_num_threads() == 1, ('before the pool', torch.get_num_threads())
assert info['numba_threads'] >= 1
from numba import njit, prange

@njit(parallel=True)
def total(a):
    s = 0.0
    for i in prange(a.size):
        s += a[i]
    return s

total(np.ones(8))  # the pool starts (and resets OpenMP's count)
torch.set_num_threads(1)
machine_info(gpu=False)
assert torch.get_num_threads() == 1, ('with the pool', torch.get_num_threads())
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
