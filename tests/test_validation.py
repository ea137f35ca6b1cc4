"""Every value is checked where it is read: the configuration's numbers, the content of every artefact, every
program's command line; refused runs leave nothing behind and a failing job says why.

Each probe of a fault or wrong input that once went through is a test here (the ones that always held are in
test_reliability.py and test_faults.py).
"""
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, tiny
from core import io as core_io
from core.config import merge
from core.errors import InvalidInputError, ProvenanceError
from core.layout import Layout
from surrogates import datasets as ds
from surrogates.network import load_checkpoint
from surrogates.study import Study
from surrogates.scoring import expected_model
from training.train import train_surrogate

ARCH = "mlp3x64"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """B's datasets (n = 300) and a briefly trained B ddnn model, in one results folder."""
    root = tmp_path_factory.mktemp("validation") / "results"
    cfg = tiny(root)
    lay = Layout(root)
    ds.write_test(cfg, "B", lay.test("B"))
    ds.write_split(cfg, "B", 300, lay.split("B", 300, "train"), lay.split("B", 300, "val"))
    train_surrogate(cfg, "B", "ddnn", 300, 0, lay.dataset_dir("B"), lay.model_dir("B", "ddnn", 300, ARCH, 0), iterations=5)
    return cfg, lay


def fresh(trained, tmp_path) -> tuple[Study, Layout]:
    cfg, lay = trained
    new = Layout(tmp_path / "results")
    shutil.copytree(lay.root, new.root)
    return Study.of({**cfg.as_dict(), "results_dir": str(new.root)}, cfg.problems), new


# ---------------------------------------------------------------- every number of the configuration finite
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("extra,key", [
    ({"training": {"lr": NAN}}, "training.lr"),
    ({"training": {"lr_final": INF}}, "training.lr_final"),
    ({"training": {"physics": {"weight": NAN}}}, "training.physics.weight"),
    ({"training": {"physics": {"ic_weight": NAN}}}, "training.physics.ic_weight"),
    ({"training": {"sampling_strength": NAN}}, "training.sampling_strength"),
    ({"training": {"overrides": {"C": {"lr": NAN}}}}, "training.overrides.C.lr"),
    ({"solver": {"floor_rtol": NAN}}, "solver.floor_rtol"),
    ({"problems": {"B": {"fixed": {"I": NAN}}}}, "problems.B.fixed.I"),
    ({"problems": {"hh_m": {"protocol": {"amplitude": -INF}}}}, "problems.hh_m.protocol.amplitude"),
    ({"problems": {"C": {"ranges": {"I": [0.08, NAN]}}}}, r"problems.C.ranges.I.1"),
    ({"speed": {"time_budget_s": INF}}, "speed.time_budget_s"),
    ({"datasets": {"val_fraction": NAN}}, "datasets.val_fraction"),
])
def test_a_non_finite_number_anywhere_in_the_config_is_refused_naming_its_key(extra, key, tmp_path):
    with pytest.raises(InvalidInputError, match=rf"^config key {key.replace('.', chr(92) + '.')}: -?(nan|inf) is not a finite number"):
        tiny(tmp_path, **extra)


def test_the_same_nan_read_from_yaml_is_refused(tiny_config):
    from surrogates.config import load_config

    path = tiny_config()
    path.write_text(path.read_text() + "\nsolver: {floor_rtol: .nan}\n")
    with pytest.raises(InvalidInputError, match=r"config key solver\.floor_rtol: nan is not a finite number"):
        load_config(ROOT / "config/quick.yaml", path)


@pytest.mark.parametrize("where", [".", str(ROOT), "core", "surrogates/out", "config", ".git/x"])
def test_a_results_dir_in_the_checkout_s_own_folders_is_refused(where, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(InvalidInputError, match=r"config key results_dir: .* the checkout .* itself or one of its source"):
        tiny(tmp_path, results_dir=where)


def test_a_results_dir_of_its_own_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert tiny(tmp_path, results_dir="results/somewhere").results_dir == "results/somewhere"


def test_the_workflow_refuses_results_dir_dot_when_it_parses(tiny_config, snakemake):
    res = snakemake("-n", "--configfile", "config/quick.yaml", tiny_config(), "--config", "results_dir=.")
    assert res.returncode != 0 and "config key results_dir" in res.stdout + res.stderr


# ---------------------------------------------------------------- content checked where it is read
def _nan_labels_with_checksums_recomputed(path: Path) -> None:
    data, meta = core_io.load_dataset(path)
    data["Y"] = data["Y"].copy()
    data["Y"][7, 0] = np.nan
    np.savez(path, **data)
    meta["sha256"]["Y"] = core_io.sha256_array(data["Y"])
    meta["sidecar_sha256"] = core_io.sha256_json({k: v for k, v in meta.items() if k != "sidecar_sha256"})
    core_io.sidecar_path(path).write_text(json.dumps(meta))


def test_nan_test_labels_with_checksums_recomputed_are_refused_before_training(trained, tmp_path):
    cfg, lay = fresh(trained, tmp_path)
    _nan_labels_with_checksums_recomputed(lay.test("B"))
    with pytest.raises(InvalidInputError, match=rf"dataset {lay.test('B')}: Y holds NaN or infinite values \(first at row 7\)"):
        core_io.load_dataset(lay.test("B"))
    out = tmp_path / "run"
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        train_surrogate(cfg, "B", "ddnn", 300, 0, lay.dataset_dir("B"), out, iterations=5)
    assert not out.exists(), "a refused training left its folder behind"


def _table(cfg, lay):
    from benchmarks.tables import accuracy_table

    c = cfg.as_dict()
    cfg = Study.of({**c, "training": {**c["training"], "surrogates": {"ddnn": ["B"]}}})
    return accuracy_table([lay.run_file("metrics", "B", "ddnn", 300, ARCH, 0)], [lay.sidecar(lay.test("B"))], cfg)


@pytest.mark.parametrize("mae", [1e-5, NAN], ids=["below-the-Euler-floor", "nan"])
def test_an_edited_metrics_file_is_refused_by_every_reader(trained, tmp_path, mae):
    from benchmarks import reference

    cfg, lay = fresh(trained, tmp_path)
    assert len(_table(cfg, lay)) == 2  # the run and the Euler floor
    f = lay.run_file("metrics", "B", "ddnn", 300, ARCH, 0)
    m = json.loads(f.read_text())
    m["mae"] = mae
    f.write_text(json.dumps(m))
    message = rf"metrics file {f} was changed after it was written"
    with pytest.raises(InvalidInputError, match=message):
        _table(cfg, lay)
    with pytest.raises(InvalidInputError, match=message):
        c = cfg.as_dict()
        reference.grid_state(Study.of({**c, "training": {**c["training"], "surrogates": {"ddnn": ["B"]}}}), lay)
    del m["content_sha256"]  # a record without its checksum (by hand, or an older version) is refused too
    f.write_text(json.dumps(m))
    with pytest.raises(InvalidInputError, match=rf"metrics file {f} records no content_sha256"):
        _table(cfg, lay)


def _overwrite_weights_in_place(path: Path) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    first = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][first] = ckpt["state_dict"][first] * 1.5
    torch.save(ckpt, path)


def test_weights_overwritten_in_place_are_refused_by_every_consumer(trained, tmp_path):
    from benchmarks import figures, speedup

    cfg, lay = fresh(trained, tmp_path)
    model = lay.run_file("model", "B", "ddnn", 300, ARCH, 0)
    load_checkpoint(model, expect=expected_model(cfg, "B", "ddnn", 300, 0, ARCH))  # intact: loads
    _overwrite_weights_in_place(model)
    message = rf"checkpoint {model}: its weights were changed after it was written"
    with pytest.raises(InvalidInputError, match=message):  # what the export and the ensemble ask
        load_checkpoint(model, expect=expected_model(cfg, "B", "ddnn", 300, 0, ARCH))
    with pytest.raises(InvalidInputError, match=message):
        figures.load_network(cfg, model, ["B", "ddnn", 300, 0, ARCH])
    scfg = Study.of(merge(cfg.as_dict(), {"speed": {"problem": "B", "surrogates": ["ddnn"], "ensembles": []}}))
    with pytest.raises(InvalidInputError, match=message):
        speedup.load_surrogates(scfg, {"ddnn": model})


def test_a_checkpoint_without_its_weights_checksum_is_refused(trained, tmp_path):
    _, lay = fresh(trained, tmp_path)
    model = lay.run_file("model", "B", "ddnn", 300, ARCH, 0)
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    del ckpt["weights_sha256"]
    torch.save(ckpt, model)
    with pytest.raises(InvalidInputError, match=rf"checkpoint {model} records no weights_sha256"):
        load_checkpoint(model)


def test_a_figure_refuses_a_checkpoint_of_another_kind_in_its_slot(trained, tmp_path):
    from benchmarks import figures

    cfg, lay = fresh(trained, tmp_path)
    ddnn = lay.run_file("model", "B", "ddnn", 300, ARCH, 0)
    pinn = lay.run_file("model", "B", "pinn", 300, ARCH, 0)
    pinn.parent.mkdir(parents=True)
    shutil.copy(ddnn, pinn)  # the DDNN's network where the PINN's is drawn
    net, prov = figures.load_network(cfg, ddnn, ["B", "ddnn", 300, 0, ARCH])
    assert prov["surrogate"] == "ddnn"
    with pytest.raises(ProvenanceError, match=rf"checkpoint {pinn} was made for surrogate = 'ddnn', but it is used for "
                                              r"surrogate = 'pinn'"):
        figures.load_network(cfg, pinn, ["B", "pinn", 300, 0, ARCH])


@pytest.mark.parametrize("name", ["model_C", "model_D_itnn"])
def test_the_shipped_reference_checkpoint_carries_its_checksums(name):
    """Each shipped network: its weights match the checkpoint's checksum, its metrics.json its content checksum
    and the checkpoint's provenance, and the file the sha256 its card (README.md) gives."""
    import hashlib

    from surrogates.network import weights_sha256

    folder = ROOT / "benchmarks/reference" / name
    ckpt = torch.load(folder / "best_model.pth", map_location="cpu", weights_only=True)
    assert ckpt["weights_sha256"] == weights_sha256(ckpt["state_dict"])
    metrics = core_io.read_record(folder / "metrics.json")
    assert metrics["provenance"] == ckpt["meta"]["provenance"]
    assert metrics["mae"] < 1e-3
    digest = hashlib.sha256((folder / "best_model.pth").read_bytes()).hexdigest()
    assert f"sha256 `{digest}`" in (folder / "README.md").read_text()
    assert (folder / "best_model.pth").stat().st_size < 250_000  # small enough to track


# ---------------------------------------------------------------- every program's command line
def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def one_line_error(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr[-3000:]
    return lines[0]


def _bad_invocations(tmp_path):
    quick = ROOT / "config/quick.yaml"
    missing = tmp_path / "missing.yaml"
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    yield ("benchmarks.speedup", "--config", quick, "--backends", "nosuch"), ["--backends", "unknown speed backend(s) ['nosuch']"]
    yield ("benchmarks.speedup", "--config", quick, "--precisions", "fp8"), ["--precisions", "'fp8' is not one of"]
    yield ("benchmarks.speedup", "--config", quick, "--k-sweep", "7"), ["--k-sweep", "K = 7"]
    yield ("benchmarks.speedup", "--config", quick, "--n", "0"), ["--n", "less than the minimum of 1"]
    yield ("benchmarks.speedup", "--config", quick, "--model", "ddnn"), ["--model", "KIND=PATH"]
    yield ("benchmarks.speedup", "--config", quick, "--model", f"ddnn={tmp_path / 'none.pth'}"), ["none.pth", "does not exist"]
    if not torch.cuda.is_available():
        yield ("benchmarks.speedup", "--config", quick, "--device", "cuda"), ["--device", "no usable GPU"]
    yield ("benchmarks.reference", "--config", missing), [str(missing)]
    yield ("benchmarks.itnn_transfer", "--config", missing, "--n", "5", "--arch", ARCH, "--model", "x.pth", "--on", "C"), \
        [str(missing)]
    yield ("benchmarks.solver_throughput", "--config", quick, "--n", "0"), ["--n", "at least 1"]
    yield ("benchmarks.solver_throughput", "--config", quick, "--max-seconds", "nan"), ["--max-seconds", "finite"]
    yield ("benchmarks.cpu_backends", "--config", quick, "--rows", "0"), ["--rows", "at least 1"]
    yield ("benchmarks.training_speed", "--config", quick, "--rounds", "-1"), ["--rounds", "at least 1"]
    yield ("benchmarks.surrogate_accuracy", "--config", quick, "--workers", "0"), ["--workers", "at least 1"]
    yield ("benchmarks.data_size", "--config", quick, "--passes", "0"), ["--passes", "at least 1"]
    yield ("benchmarks.data_size", "--config", quick, "--problems", "D"), ["'D' has no ddnn"]
    yield ("surrogates.datasets", "--config", missing, "test", "--problem", "B", "--out", tmp_path / "t.npz"), [str(missing)]
    yield ("surrogates.datasets", "--config", quick, "test", "--problem", "Z", "--out", tmp_path / "t.npz"), ["'Z'"]
    yield ("training.train", "--config", quick, "--problem", "B", "--surrogate", "nosuch", "--n", "300", "--data",
           tmp_path, "--out", tmp_path / "o"), ["--surrogate", "nosuch"]
    yield ("training.train", "--config", quick, "--problem", "B", "--surrogate", "ddnn", "--n", "0", "--data",
           tmp_path, "--out", tmp_path / "o"), ["--n"]
    # a folder that cannot be written (here: below a file): the OS's reason, naming the path
    yield ("training.train", "--config", quick, "--problem", "B", "--surrogate", "ddnn", "--n", "300", "--data",
           tmp_path, "--out", a_file / "run"), [str(a_file / "run")]


def test_every_program_refuses_bad_arguments_in_one_line_naming_them(tmp_path):
    failures = []
    for args, needles in _bad_invocations(tmp_path):
        res = run_cli(*args)
        try:
            line = one_line_error(res)
            missing = [n for n in needles if n not in line]
            assert not missing, f"{missing} not in {line!r}"
        except AssertionError as exc:
            failures.append(f"{' '.join(map(str, args))}: {exc}")
    assert not failures, "\n".join(failures)


def test_the_speed_program_refuses_a_bad_k_before_timing_anything(tmp_path):
    out = tmp_path / "speed.csv"
    res = run_cli("benchmarks.speedup", "--config", ROOT / "config/quick.yaml", "--k-sweep", "7", "--out", out)
    one_line_error(res)
    assert res.stdout == "" and not out.exists()


def test_the_datasets_program_on_a_full_disk_says_so_in_one_line(full_disk, tmp_path, capsys):
    cfg = tiny_config_file(tmp_path)
    full_disk()
    out = tmp_path / "B" / "test.npz"
    assert ds.main(["--config", str(cfg), "test", "--problem", "B", "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and f"cannot write {out}: no space left on device" in err[0], err
    assert not out.exists() and not list(out.parent.glob(".*.tmp"))


def tiny_config_file(tmp_path) -> Path:
    import yaml

    cfg = copy.deepcopy(TINY)
    cfg["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_make_gpu_check_names_a_missing_package_in_one_line():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -S: an interpreter without site-packages (numpy, pandas, torch ... all missing)
    res = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable} -S"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(ours) == 1 and "needs the Python module 'numpy'" in ours[0] and "pip install numpy" in ours[0], res.stderr


# ---------------------------------------------------------------- refused runs leave nothing; failures say why
def test_a_refused_training_leaves_no_folder_holding_only_a_lock(trained, tmp_path):
    cfg, lay = fresh(trained, tmp_path)
    lay.split("B", 300, "val").unlink()
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(InvalidInputError, match="val.npz does not exist"):
        train_surrogate(cfg, "B", "ddnn", 300, 0, lay.dataset_dir("B"), out, iterations=5)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"  # a folder that was there before stays (empty, as it was)
    kept.mkdir()
    with pytest.raises(InvalidInputError):
        train_surrogate(cfg, "B", "ddnn", 300, 0, lay.dataset_dir("B"), kept, iterations=5)
    assert kept.is_dir() and list(kept.iterdir()) == []


def test_a_job_failing_on_an_os_error_says_why_where_snakemake_shows_it(tmp_path):
    """workflow/scripts/_log.py: the job's log on a full disk (/dev/full) takes nothing; its one-line reason
    still reaches the job's stderr, which Snakemake prints beside its error summary."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, errno, types\n"
        f"sys.path.insert(0, {str(ROOT / 'workflow/scripts')!r})\n"
        "from _log import to_log\n"
        "to_log(types.SimpleNamespace(log=['/dev/full'], rule='train'))\n"
        "from core.errors import WriteError\n"
        "raise WriteError('/results/models/B/metrics.json', OSError(errno.ENOSPC, 'No space left on device'))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0
    assert ("error in rule train: cannot write /results/models/B/metrics.json: no space left on device"
            in res.stderr), res.stderr


def test_models_written_before_checksums_are_adopted_with_the_same_weights_and_fields(trained, tmp_path):
    from surrogates import adopt

    _, lay = fresh(trained, tmp_path)
    model, metrics = lay.run_file("model", "B", "ddnn", 300, ARCH, 0), lay.run_file("metrics", "B", "ddnn", 300, ARCH, 0)
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    del ckpt["weights_sha256"]  # as an older version wrote them
    torch.save(ckpt, model)
    rec = json.loads(metrics.read_text())
    del rec["content_sha256"]
    metrics.write_text(json.dumps(rec))
    with pytest.raises(InvalidInputError):
        load_checkpoint(model)
    assert adopt.main([str(lay.root)]) == 0
    net, meta = load_checkpoint(model)
    assert meta == ckpt["meta"] and all(torch.equal(v, ckpt["state_dict"][k]) for k, v in net.state_dict().items())
    assert {k: v for k, v in core_io.read_record(metrics).items() if k != "content_sha256"} == rec
    assert adopt.adopt(lay.root) == ([], [])  # a second time: nothing to do
    _overwrite_weights_in_place(model)  # a file whose checksum does not match is named, never re-stamped
    done, problems = adopt.adopt(lay.root)
    assert done == [] and len(problems) == 1 and "weights were changed" in problems[0]
