"""The study: the validated configuration as a frozen, typed object (surrogates.study)."""
import dataclasses
import pickle

import pytest

from core.config import merge, read_config
from core.errors import InvalidInputError
from surrogates.config import load_config, validate_config
from surrogates.study import Study, TrainingSettings

QUICK = "config/quick.yaml"


@pytest.fixture(scope="module")
def study():
    return load_config()


def test_loading_returns_a_frozen_study_whose_mappings_are_read_only(study):
    assert isinstance(study, Study)
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.results_dir = "elsewhere"
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.speed.t_end = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.training("C").lr = 1.0
    with pytest.raises(TypeError):
        study.surrogates["ddnn"] = ("C",)
    with pytest.raises(TypeError):
        study.problems["Z"] = study.problem("C")
    with pytest.raises(TypeError):
        study.training("hh_m").physics.raw["weight"] = 0.0
    assert isinstance(study.seeds, tuple) and isinstance(study.speed.k_sweep, tuple)
    assert all(isinstance(h, tuple) for h in study.architectures["mlp3x64"])


def test_as_dict_is_the_validated_configuration_and_a_copy(study):
    raw = read_config()
    d = study.as_dict()
    assert d["training"]["seeds"] == raw["training"]["seeds"] and d["speed"]["problem"] == raw["speed"]["problem"]
    assert d["datasets"]["val_fraction"] == 0.1 and d["solver"]["floor_rtol"] == 1e-10  # the schema's defaults
    d["training"]["seeds"].append(99)
    assert 99 not in study.as_dict()["training"]["seeds"] and 99 not in study.seeds
    again = validate_config(study.as_dict())  # validating the validated configuration changes nothing
    assert again.as_dict() == study.as_dict()


def test_the_typed_sections_are_the_configurations_values(study):
    d = study.as_dict()
    assert study.results_dir == d["results_dir"]
    assert study.solver.dt == d["solver"]["dt"] and study.solver.as_dict() == d["solver"]
    assert study.datasets.sizes == tuple(d["datasets"]["sizes"]) and study.datasets.as_dict() == d["datasets"]
    assert study.speed.n_cells == tuple(d["speed"]["n_cells"]) and study.speed.as_dict() == d["speed"]
    assert study.seeds == tuple(d["training"]["seeds"]) and list(study.problems) == list(d["problems"])
    assert study.problem_spec("D") == d["problems"]["D"] and study.problem_spec("nowhere") == {}


def test_problems_are_built_once_and_an_unknown_one_is_named(study):
    assert study.problem("C") is study.problem("C") is study.problems["C"]
    assert study.rollout_sources(study.problem("D")) == {"C": study.problem("C")}
    assert study.rollout_sources(study.problem("C")) is None
    with pytest.raises(InvalidInputError, match=r"unknown problem 'Z'; valid: \['A', 'B', 'C', 'D', 'hh_m'\]"):
        study.problem("Z")
    with pytest.raises(InvalidInputError, match="unknown problem 'Z'"):
        study.training("Z")


def test_training_settings_apply_a_problems_overrides_and_record_as_before(study):
    d = study.as_dict()["training"]
    over = d["overrides"]["hh_m"]
    s = study.training("hh_m")
    assert isinstance(s, TrainingSettings) and s.problem == "hh_m"
    assert s.architecture == over["architecture"] and s.lbfgs_iterations == over["lbfgs_iterations"]
    assert s.hidden == tuple(tuple(h) for h in d["architectures"][over["architecture"]])
    assert s.physics.weight == over["physics"]["weight"] and s.physics.ic_weight == d["physics"]["ic_weight"]
    assert s.output_bounds == {"m": (0.0, 1.0)}
    c = study.training("C")  # no overrides: the section itself; absent keys take the documented defaults
    assert c.lr == d["lr"] and c.output_bounds is None and c.engine == d.get("engine", "auto")
    # what a run records as its settings: the section with the overrides, without the grid's own keys
    recorded = s.as_dict()
    assert not {"overrides", "ensemble", "cohort", "side_by_side"} & set(recorded)
    base = {k: v for k, v in d.items() if k not in ("overrides", "ensemble", "cohort", "side_by_side")}
    assert recorded == {**base, **over, "physics": {**d["physics"], **over["physics"]}}


def test_the_grid_is_the_studys(study):
    grid = study.training_grid()
    assert grid[0] == ("A", "ddnn", study.problem("A").sizes[0], study.training("A").architecture, study.seeds[0])
    assert len(grid) == sum(len(study.problem(p).sizes) * len(study.seeds)
                            for names in study.surrogates.values() for p in names)
    assert {(p, k, n, a) for p, k, n, a, _ in study.ensemble_grid()} == {(p, k, n, a) for p, k, n, a, _ in grid}
    assert study.speed_problem_of("itnn") == "D" and study.speed_problem_of("ddnn") == "C"
    p, n, seed, arch = study.speed_model("itnn")
    assert (p, n, seed) == ("D", max(study.problem("D").sizes), study.seeds[0])
    assert [k for k, *_ in study.speed_ensembles()] == list(study.speed.ensembles)
    assert study.training_priority("hh_m", "ddnn") == 2 and study.training_priority("C", "pinn") == 1
    assert study.training_priority("C", "ddnn") == 0 and study.cohort_kinds() == []
    cohort = validate_config(merge(study.as_dict(), {"training": {"cohort": True}}))
    assert cohort.cohort_kinds() == ["ddnn", "itnn"]
    one_seed = validate_config(merge(study.as_dict(), {"training": {"seeds": [3]}}))
    assert one_seed.ensemble_grid() == [] and one_seed.speed_ensembles() == []


def test_a_study_pickles_for_worker_processes():
    study = load_config(QUICK)
    back = pickle.loads(pickle.dumps(study))
    assert back.as_dict() == study.as_dict() and back.training("hh_m") == study.training("hh_m")
    assert back.problem("C").fingerprint == study.problem("C").fingerprint


def test_errors_still_name_the_key():
    with pytest.raises(InvalidInputError, match=r"config key speed\.surrogates: no 'pinn' is trained on 'C'"):
        validate_config(merge(read_config(QUICK), {"training": {"surrogates": {"pinn": ["B"]}}}))
    with pytest.raises(InvalidInputError, match=r"config key training\.surrogates\.itnn: itnn cannot train on 'A'"):
        validate_config(merge(read_config(QUICK), {"training": {"surrogates": {"itnn": ["A"]}}}))


def test_every_key_of_the_schema_has_a_typed_field():
    """A key added to core/config.schema.yaml gets its field in the study too (else it could only be read
    by key, which tests/test_architecture.py refuses)."""
    from core.config import schema
    from surrogates.study import DatasetSettings, PhysicsSettings, SolverSettings, SpeedSettings

    def fields(cls):
        return {f.name for f in dataclasses.fields(cls)}

    s = schema()
    props = s["properties"]
    for cls, section in ((SolverSettings, "solver"), (DatasetSettings, "datasets"), (SpeedSettings, "speed")):
        assert set(props[section]["properties"]) <= fields(cls), section
    assert set(s["$defs"]["physics"]["properties"]) <= fields(PhysicsSettings)
    assert set(s["$defs"]["train_keys"]) <= fields(TrainingSettings)
    grid = {"ensemble", "cohort", "side_by_side", "seeds", "architectures", "surrogates", "architecture"}
    assert set(props["training"]["properties"]) - set(s["$defs"]["train_keys"]) - {"overrides"} <= grid & fields(Study)
    assert {"results_dir", "model_paths", "problems"} <= fields(Study)
