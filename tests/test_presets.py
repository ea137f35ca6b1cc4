"""Presets choose what runs: problems and surrogate kinds dropped, the tiny preset a file of config/, a new
model added with its file and a configuration entry, figures and captions that follow the problem."""
import math
import re

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TINY, run_snakemake
from core.config import merge, read_config, read_yaml
from core.layout import Layout
from surrogates.config import load_config, validate_config
from test_models import AP_MODEL

PRESETS = ("config/quick.yaml", "config/tiny.yaml")
EVERY_DEFAULT_PROBLEM = {p: None for p in read_yaml(ROOT / "config/config.yaml")["problems"]}


def _jobs(out: str) -> dict:
    block = out.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_the_tiny_preset_is_a_file_of_config_that_the_tests_read():
    assert TINY == read_yaml(ROOT / "config/tiny.yaml")
    cfg = load_config(*PRESETS)
    assert cfg.training("C").iterations == 60 and cfg.datasets.sizes == (300,)
    assert cfg.results_dir == "results/tiny"


def test_a_preset_drops_problems_and_kinds_with_null_or_an_empty_list():
    cfg = validate_config(merge(read_config(*PRESETS), {"problems": {"A": None, "hh_m": None},
                                                        "training": {"surrogates": {"itnn": []}}}))
    assert list(cfg.problems) == ["B", "C", "D"]
    # A and hh_m leave every list and override naming them; itnn (and pinn_seed, which trained on hh_m only) go
    assert cfg.surrogates == {"ddnn": ("B", "C"), "pinn": ("B", "C")}
    overrides = cfg.as_dict()["training"]["overrides"]
    assert "A" not in overrides and "hh_m" not in overrides
    assert cfg.speed.surrogates == ("ddnn", "pinn") and cfg.speed.ensembles == ("ddnn",)
    assert {p for p, *_ in cfg.training_grid()} == {"B", "C"}
    kinds = validate_config(merge(read_config(*PRESETS), {"training": {"surrogates": {"pinn": None, "pinn_seed": None}}}))
    assert set(kinds.surrogates) == {"ddnn", "itnn"} and kinds.speed.surrogates == ("ddnn", "itnn")
    # a name that was never there is still refused, naming the key
    with pytest.raises(ValueError, match=r"config key training\.surrogates\.ddnn: unknown problem 'Q'"):
        validate_config(merge(read_config(*PRESETS), {"training": {"surrogates": {"ddnn": ["B", "Q"]}}}))
    with pytest.raises(ValueError, match=r"config key speed\.problem: 'C' is not a trajectory problem"):
        validate_config(merge(read_config(*PRESETS), {"problems": {"C": None, "D": None}}))


def test_a_dry_run_of_a_preset_that_drops_plans_only_what_is_left(tmp_path):
    drop = tmp_path / "drop.yaml"
    drop.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"), "problems": {"A": None, "hh_m": None},
                                    "training": {"surrogates": {"itnn": None}}}))
    res = run_snakemake("-n", "--configfile", *PRESETS, drop)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    jobs = _jobs(res.stdout)
    assert jobs["train"] == 4 and jobs["dataset_test"] == 3  # ddnn, pinn on B, C; test sets of B, C, D
    assert jobs["figure_trajectories"] == 2 and "figure_hh_m" not in jobs and "figure_rollout_error" not in jobs
    lay = Layout(tmp_path / "results")
    for p, planned in (("A", False), ("B", True), ("C", True)):
        assert (str(lay.figure(f"trajectories_{p}", "png")) in res.stdout) == planned, p


def test_time_ranges_come_from_the_problem():
    cfg = load_config(*PRESETS)
    assert cfg.problem("C").time_range == "t in [0, 20]"
    assert cfg.problem("hh_m").time_range == "t in [0, 40] ms"  # the tiny preset's t_end
    assert cfg.problem("D").time_range == "one step of 0.1"


def test_a_model_folder_the_configuration_names_is_searched_and_a_bad_one_named(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ap_model.py").write_text(AP_MODEL.format(name="ap_test"))
    problem = {"kind": "trajectory", "model": "ap_test", "inputs": ["t", "u0"], "outputs": ["u", "v"],
               "fixed": {"v0": 0.0}, "ranges": {"u0": [0.2, 0.8]}, "t_end": 10.0, "save_interval": 0.1,
               "test_trajectories": 10}
    base = read_config(*PRESETS)
    with pytest.raises(ValueError, match=r"config key problems\.E\.model: unknown model 'ap_test'"):
        validate_config(merge(base, {"problems": {"E": problem}}))
    cfg = validate_config(merge(base, {"model_paths": [str(tmp_path / "models")], "problems": {"E": problem}}))
    assert cfg.problem("E").model.state_names == ("u", "v")
    with pytest.raises(ValueError, match=r"config key model_paths: model folder .*nowhere: not a folder"):
        validate_config(merge(base, {"model_paths": [str(tmp_path / "nowhere")]}))


def test_a_new_model_is_its_file_plus_a_config_entry_and_runs_the_tiny_preset_through_snakemake(tmp_path):
    """The Aliev-Panfilov model, kept outside the checkout: a model file in a folder and a preset naming that
    folder, its problem and what trains on it (every default problem dropped). The whole chain runs on it,
    and its figure and captions are the new problem's."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "aliev_panfilov.py").write_text(AP_MODEL.format(name="aliev_panfilov"))
    preset = tmp_path / "ap.yaml"
    preset.write_text(yaml.safe_dump({
        "results_dir": str(tmp_path / "results"),
        "model_paths": [str(models)],
        "problems": {**EVERY_DEFAULT_PROBLEM,
                     "AP": {"kind": "trajectory", "model": "aliev_panfilov", "inputs": ["t", "u0", "v0"],
                            "outputs": ["u", "v"], "ranges": {"u0": [0.2, 0.8], "v0": [0.0, 0.5]}, "t_end": 20.0,
                            "save_interval": 0.1, "test_trajectories": 20}},
        "training": {"surrogates": {"ddnn": ["AP"], "pinn": ["AP"], "pinn_seed": None, "itnn": None}},
        "speed": {"problem": "AP"},
    }))
    res = run_snakemake("--cores", "2", "--configfile", *PRESETS, preset, timeout=1200)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    lay = Layout(tmp_path / "results")
    table = pd.read_csv(lay.table("accuracy", "csv"))
    assert set(table.problem) == {"AP"} and set(table.surrogate) == {"ddnn", "pinn", "euler_floor"}
    assert all(math.isfinite(v) for v in table[["mae_mean", "max_abs_err_mean"]].to_numpy().ravel())
    for f in ("trajectories_AP", "error_vs_size", "pinn_vs_ddnn", "speedup_vs_n"):
        assert lay.figure(f, "png").stat().st_size > 1000, f
    assert not lay.figure("trajectories_C", "png").exists()
    assert "held-out test MAE of the surrogate on problem AP (t in [0, 20])" in lay.table("speedup", "md").read_text()
    report = tmp_path / "report.html"
    res = run_snakemake("--configfile", *PRESETS, preset, "--report", report)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "Problem AP (t in [0, 20])" in report.read_text(errors="replace")


def test_the_run_one_problem_example_of_config_readme_is_a_valid_preset():
    block = re.search(r"```yaml\n(.*?)```", (ROOT / "config/README.md").read_text(), re.S).group(1)
    cfg = validate_config(merge(read_config(), yaml.safe_load(block)))
    assert list(cfg.problems) == ["X"] and {(p, k) for p, k, *_ in cfg.training_grid()} == {("X", "ddnn"), ("X", "pinn")}


def test_the_luo_rudy_preset_trains_ddnn_pinn_and_a_timed_itnn_on_every_state_and_times_its_beat():
    """config/lr1991.yaml: one LR1991 problem whose outputs are all 8 states (the residual needs them), ddnn and
    pinn on it with the residual's guards, an itnn on its step problem lr_step (the time an input: the model is
    paced), and the speed workload over the beat the surrogates learnt."""
    pytest.importorskip("myokit")
    cfg = load_config("config/config.yaml", "config/lr1991.yaml")
    assert list(cfg.problems) == ["LR1991", "lr_step"]
    p, s = cfg.problem("LR1991"), cfg.problem("lr_step")
    assert sorted(p.outputs) == sorted(p.model.state_names) and list(p.outputs[:2]) == ["membrane.V", "ica.Ca_i"]
    assert s.outputs == p.outputs and s.test_from == "LR1991" and s.rollout_clock == (len(s.param_inputs) - 1, s.step)
    assert s.box()[1][-1] >= p.t_end - s.step
    assert cfg.surrogates == {"ddnn": ("LR1991",), "pinn": ("LR1991",), "itnn": ("lr_step",)}
    assert {s for _, s, *_ in cfg.training_grid()} == {"ddnn", "pinn", "itnn"}
    physics = cfg.training("LR1991").physics
    assert physics.clamp_states and physics.rhs_dtype == "float64"
    assert cfg.speed.problem == "LR1991" and cfg.speed.t_end == p.t_end
    assert cfg.speed.surrogates == ("ddnn", "pinn", "itnn")
