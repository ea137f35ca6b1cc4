"""Faults and bad input, through the workflow: killed runs, a failing job, damaged files, two runs at once.

Each test drives `snakemake` on the tiny preset (conftest.TINY) with its results in tmp_path.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, snakemake_cmd
from core.layout import Layout
from surrogates import MLP, DataLoss
from training import Trainer
from core import io as core_io
from core.io import load_dataset

ARCH = "mlp3x64"


def model_dir(results: Path, problem: str, surrogate: str = "ddnn", n: int = 300) -> Path:
    return Layout(results).model_dir(problem, surrogate, n, ARCH, 0)


def train_log(results: Path, problem: str, surrogate: str = "ddnn", n: int = 300) -> Path:
    return Layout(results).log("train", f"{problem}_{surrogate}_n{n}_{ARCH}_seed0.log")


def start(cfg, *targets, cores=2):
    """Start snakemake in its own process group (so a kill reaches its jobs too, as a node failure would);
    its output goes to snakemake.out beside the config file."""
    out = open(Path(cfg).with_name("snakemake.out"), "w")
    proc = subprocess.Popen(snakemake_cmd(*targets, "--cores", cores, "--configfile", "config/quick.yaml", cfg),
                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.output = lambda: Path(out.name).read_text()[-3000:]
    return proc


def wait_until(cond, proc, timeout=300, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended (rc {proc.returncode}) before {what}:\n{proc.output()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def recorded(*paths: Path) -> bool:
    """Whether Snakemake has recorded ``paths`` (all of a job's outputs) as the outputs of a finished job:
    each has its metadata record and no incomplete marker. Snakemake writes every output's record, then
    removes every marker; a kill before the last removal makes the job incomplete (seen once: the test
    waited for one output's record only, killed in between, and the rerun trained the finished job again)."""
    import base64

    names = [base64.urlsafe_b64encode(str(Path(p).resolve()).encode()).decode() for p in paths]
    state = ROOT / ".snakemake"
    return all((state / "metadata" / n).exists() and not (state / "incomplete" / n).exists() for n in names)


def checkpoint_iteration(d: Path) -> int:
    try:
        return torch.load(d / "checkpoint.pth", map_location="cpu", weights_only=False)["iteration"]
    except Exception:  # not there yet, or being renamed into place
        return 0


# ---------------------------------------------------------------- killed in the middle of training
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["Ctrl-C", "SIGTERM", "SIGKILL"])
def test_killed_mid_training_the_rerun_resumes_and_keeps_completed_work(sig, tiny_config, snakemake, tmp_path):
    # C trains long enough to be killed part-way; B finishes first (2 cores: they train side by side). C may
    # start several seconds before B (B's test set is solved first): 8000 steps of the fused engine were over
    # in that time on an idle machine, so C takes 40000.
    total = 40_000
    cfg = tiny_config({"training": {"overrides": {"C": {"iterations": total, "val_every": 100}}}})
    results = tmp_path / "results"
    fast, slow = model_dir(results, "B"), model_dir(results, "C")
    targets = [fast / "metrics.json", slow / "metrics.json"]
    proc = start(cfg, *targets)
    outputs = [fast / f for f in ("metrics.json", "best_model.pth", "losses.csv")]  # rule train's
    wait_until(lambda: recorded(*outputs), proc, what="B trained and recorded complete by Snakemake")
    wait_until(lambda: checkpoint_iteration(slow) >= 200, proc, what="C part-way")
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    killed_at = checkpoint_iteration(slow)
    assert 200 <= killed_at < total
    assert not (slow / "metrics.json").exists()
    done = (fast / "metrics.json").stat().st_mtime_ns

    if sig == signal.SIGKILL:
        # Snakemake had no chance to clean up: its lock stays, and a new run refuses, saying what to do
        locked = snakemake(*targets, "--cores", "2", "--configfile", "config/quick.yaml", cfg)
        out = locked.stdout + locked.stderr
        assert locked.returncode != 0 and "Directory cannot be locked" in out and "--unlock" in out, out[-2000:]
        assert snakemake(*targets, "--unlock", "--configfile", "config/quick.yaml", cfg).returncode == 0
    # a plain rerun (the workflow's default profile redoes incomplete outputs) finishes the work
    rerun = snakemake(*targets, "--cores", "2", "--configfile", "config/quick.yaml", cfg)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]

    assert (fast / "metrics.json").stat().st_mtime_ns == done, "the completed model was trained again"
    m = json.loads((slow / "metrics.json").read_text())
    assert m["iterations"] == total and m["resumed_from_iteration"] >= killed_at
    assert "resuming from" in train_log(results, "C").read_text()
    assert not (slow / "checkpoint.pth").exists()  # a finished run leaves no resume point behind
    for f in results.glob("datasets/**/*.npz"):
        load_dataset(f)  # every dataset is complete: its sha256 matches its sidecar
    assert list(results.rglob(".*.tmp")) == []  # no temporary file left behind


# ---------------------------------------------------------------- one job fails
@pytest.mark.slow
def test_a_diverging_job_fails_only_its_targets_and_keep_going_finishes_the_rest(tiny_config, snakemake, tmp_path):
    cfg = tiny_config({"training": {"overrides": {"C": {"lr": 1.0e30}}}})  # forces a non-finite loss on C
    results = tmp_path / "results"
    targets = [model_dir(results, p) / "metrics.json" for p in ("B", "C")] + \
              [model_dir(results, "B", "pinn") / "metrics.json"]
    res = snakemake(*targets, "--cores", "2", "--keep-going", "--configfile", "config/quick.yaml", cfg)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Error in rule train" in out and "problem=C" in out
    assert (model_dir(results, "B") / "metrics.json").exists()
    assert (model_dir(results, "B", "pinn") / "metrics.json").exists()
    failed = model_dir(results, "C")
    assert not (failed / "metrics.json").exists() and not (failed / "best_model.pth").exists()
    log = train_log(results, "C").read_text()
    assert "TrainingDivergedError" in log and "training stopped at iteration" in log
    assert "Lower the learning rate" in log


# ---------------------------------------------------------------- damaged inputs
@pytest.fixture
def trained_b(tiny_config, snakemake, tmp_path):
    cfg = tiny_config()
    results = tmp_path / "results"
    d = model_dir(results, "B")
    res = snakemake(d / "onnx_check.json", "--cores", "2", "--configfile", "config/quick.yaml", cfg)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return cfg, results, d


def _rerun(snakemake, cfg, target):
    res = snakemake(target, "--cores", "1", "--configfile", "config/quick.yaml", cfg)
    return res.returncode, res.stdout + res.stderr


def _finished(d: Path) -> dict:
    return {f: (d / f).read_bytes() for f in ("metrics.json", "best_model.pth", "losses.csv")}


@pytest.mark.slow
def test_damaged_or_changed_inputs_of_a_finished_model_stop_the_run_before_it_is_deleted(trained_b, snakemake):
    """Snakemake would rerun the training (its input changed) and delete the trained model first; the run
    stops when the workflow is parsed instead, naming the file, and the model stays as it was."""
    cfg, results, d = trained_b
    train = Layout(results).split("B", 300, "train")
    good, trained = train.read_bytes(), _finished(d)

    def refused(*needles):
        for args in (("-n",), ("--cores", "1")):  # a dry run says so too
            res = snakemake(d / "metrics.json", *args, "--configfile", "config/quick.yaml", cfg)
            out = res.stdout + res.stderr
            assert res.returncode != 0 and "rule train:" not in res.stdout, out[-3000:]
            assert str(train.with_suffix(needles[0])) in out and all(n in out for n in needles[1:]), out[-3000:]
            assert "finished model" in out and str(d / "best_model.pth") in out, out[-3000:]
        assert _finished(d) == trained, "the finished model was touched"

    train.write_bytes(good[: len(good) // 2])  # truncated
    refused(".npz", "damaged")

    with np.load(io.BytesIO(good)) as z:  # a valid file whose numbers changed
        arrays = {k: z[k] for k in z.files}
    arrays["Y"] = arrays["Y"] + 1e-3
    np.savez(train, **arrays)
    refused(".npz", "sha256")

    arrays["Y"][3, 0] = np.nan  # NaN labels with the checksums recomputed: refused for the NaN
    side = train.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["sha256"]["Y"] = core_io.sha256_array(arrays["Y"])
    meta["sidecar_sha256"] = core_io.sha256_json({k: v for k, v in meta.items() if k != "sidecar_sha256"})
    np.savez(train, **arrays)
    side.write_text(json.dumps(meta))
    refused(".npz", "NaN or infinite")

    # an edited sidecar (the arrays intact)
    train.write_bytes(good)
    meta = json.loads(side.read_text())
    meta["dt"], meta["problem"]["ranges"]["u0"] = 0.02, [0.0, 0.5]
    side.write_text(json.dumps(meta))
    refused(".json", "was changed after it was written")

    # deleted (the way the message says to regenerate it): made again, and the model trains again
    train.unlink()
    side.unlink()
    rc, out = _rerun(snakemake, cfg, d / "metrics.json")
    assert rc == 0, out[-3000:]
    assert (d / "metrics.json").stat().st_mtime_ns > 0 and json.loads((d / "metrics.json").read_text())["mae"] > 0


@pytest.mark.slow
def test_a_damaged_checkpoint_is_refused_by_the_onnx_export(trained_b, snakemake):
    cfg, results, d = trained_b
    model = d / "best_model.pth"
    model.write_bytes(model.read_bytes()[:200])
    rc, out = _rerun(snakemake, cfg, d / "onnx_check.json")
    assert rc != 0
    log = Layout(results).log("export", f"B_ddnn_n300_{ARCH}_seed0.log").read_text()
    assert f"checkpoint {model} is damaged" in log, log[-2000:]


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path, capsys):
    """checkpoint.pth left by a killed run whose settings (here: the architecture) have since changed."""
    X = np.random.default_rng(0).uniform(-1, 1, (256, 2)).astype(np.float32)
    Y = X[:, :1] * 2
    old = Trainer(MLP(2, 1, [("Tanh", 8)]), tmp_path, val_every=10, fingerprint={"hidden": [["Tanh", 8]]})
    old.add_loss(DataLoss(X, Y, batch_size=64))
    old.train(20)
    assert (tmp_path / "checkpoint.pth").exists()
    new = Trainer(MLP(2, 1, [("Tanh", 16), ("Tanh", 16)]), tmp_path, val_every=10,
                  fingerprint={"hidden": [["Tanh", 16], ["Tanh", 16]]})
    new.add_loss(DataLoss(X, Y, batch_size=64))
    summary = new.train(20)
    assert not summary["resumed"] and summary["iterations"] == 20
    err = capsys.readouterr().err
    assert "not resuming" in err and "differs in: hidden" in err
    same = Trainer(MLP(2, 1, [("Tanh", 16), ("Tanh", 16)]), tmp_path, val_every=10,
                   fingerprint={"hidden": [["Tanh", 16], ["Tanh", 16]]})
    same.add_loss(DataLoss(X, Y, batch_size=64))
    assert same.train(30)["resumed_from"] == 20


# ---------------------------------------------------------------- two runs in one directory
@pytest.mark.slow
def test_a_second_run_on_the_same_outputs_is_refused_by_the_lock(tiny_config, snakemake, tmp_path):
    # long enough that the first run is still training while two more Snakemake runs start (each takes
    # seconds to build its DAG, many more on a loaded machine: 20,000 steps finished before the second did)
    cfg = tiny_config({"training": {"overrides": {"C": {"iterations": 60000, "val_every": 100}}}})
    results = tmp_path / "results"
    target = model_dir(results, "C") / "metrics.json"
    first = start(cfg, target, cores=1)
    wait_until(lambda: checkpoint_iteration(model_dir(results, "C")) >= 100, first, what="training under way")
    # a second run (which would redo the running job's incomplete outputs) meets the first run's lock,
    # before it deletes anything
    second = snakemake(target, "--cores", "1", "--configfile", "config/quick.yaml", cfg)
    out = second.stdout + second.stderr
    assert second.returncode != 0 and "Directory cannot be locked" in out, out[-2000:]
    assert (model_dir(results, "C") / "checkpoint.pth").exists()
    # a run on other outputs (another results directory) is not blocked by it
    other = tiny_config({"results_dir": str(tmp_path / "other")}, name="other.yaml")
    side = snakemake(Layout(tmp_path / "other").test("B"), "--cores", "1", "--configfile", "config/quick.yaml", other)
    assert side.returncode == 0, (side.stdout + side.stderr)[-3000:]
    assert first.wait(timeout=600) == 0, first.output()
    assert json.loads(target.read_text())["iterations"] == 60000


# ---------------------------------------------------------------- the SLURM end-to-end comparison
def _fake_results(root: Path, mae: float, backend: str):
    (root / "datasets/B").mkdir(parents=True)
    (root / "datasets/B/test.json").write_text(json.dumps({"sha256": {"X": "a", "Y": "b"}, "rows": 3}))
    (root / "tables").mkdir()
    (root / "tables/accuracy.csv").write_text(
        f"problem,surrogate,n_train,mae_mean,train_seconds_mean\nB,ddnn,300,{mae},{1 + mae}\nB,euler_floor,,0.1,\n")
    (root / "tables/speedup.csv").write_text(
        "workload,n_cells,backend,solver_seconds,surrogate_seconds,speedup,mae\n"
        f"direct,300,{backend},0.5,0.25,2.0,{mae}\n")


def test_compare_runs_accepts_timing_differences_and_rejects_result_differences(tmp_path):
    script = ROOT / "tests/slurm/compare_runs.py"
    _fake_results(tmp_path / "a", 0.01, "torch")
    _fake_results(tmp_path / "b", 0.01, "onnxruntime")  # only timing columns differ
    ok = subprocess.run([sys.executable, script, tmp_path / "a", tmp_path / "b"], capture_output=True, text=True)
    assert ok.returncode == 0 and "runs agree" in ok.stdout, ok.stdout + ok.stderr
    _fake_results(tmp_path / "c", 0.02, "torch")
    bad = subprocess.run([sys.executable, script, tmp_path / "a", tmp_path / "c"], capture_output=True, text=True)
    assert bad.returncode == 1 and "accuracy: row" in bad.stdout and "mae_mean" in bad.stdout
    (tmp_path / "sacct.txt").write_text("5|run|ci|ci|COMPLETED|00:00:03\n6|run|ci|ci|FAILED|00:00:01\n")
    failed = subprocess.run([sys.executable, script, tmp_path / "a", tmp_path / "b", "--sacct", tmp_path / "sacct.txt"],
                    capture_output=True, text=True)
    assert failed.returncode == 1 and "not COMPLETED" in failed.stdout
