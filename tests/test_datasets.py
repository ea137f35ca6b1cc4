"""Datasets: labels are exact Euler states, test sets are held out, files are verified."""
import json
import math

import numpy as np
import pytest

from core.errors import InvalidInputError
from surrogates import datasets as ds
from core.io import load_dataset, sha256_array
from surrogates.config import load_config, validate_config


@pytest.fixture(scope="module")
def cfg():
    c = load_config().as_dict()
    for name in ("B", "C"):  # smaller held-out sets keep the suite fast; the logic is the same
        c["problems"][name]["test_trajectories"] = 40
    c["problems"]["hh_m"]["t_end"] = 40.0
    c["problems"]["hh_m"]["sizes"] = [500]
    return validate_config(c)


def _problem(cfg, name):
    return cfg.problem(name)


def _euler_reference(model, y0, params, n_steps, dt=0.01):
    """An independent, plain per-row Euler loop (no backend code involved)."""
    y = np.array(y0, dtype=np.float64)
    for _ in range(n_steps):
        y = y + dt * model.numpy_rhs(y[None], params)[0]
    return y


@pytest.mark.parametrize("name", ["B", "C"])
def test_trajectory_labels_are_euler_states(cfg, name):
    p = _problem(cfg, name)
    train, _ = ds.make_split(p, 300, 0, 1)
    rng = np.random.default_rng(0)
    for i in rng.choice(300, 8, replace=False):
        row = dict(zip(p.inputs, train["X"][i]))
        y0 = [row["u0"], row["w0"]]
        params = {"I": row.get("I", p.fixed.get("I"))}
        expected = _euler_reference(p.model, y0, params, round(row["t"] / 0.01))
        np.testing.assert_allclose(train["Y"][i], expected, rtol=0, atol=1e-12)
        assert row["t"] in set(np.round(np.arange(201) * 0.1, 10)) or np.isclose(row["t"] % 0.1, 0, atol=1e-9)


def test_step_labels_are_ten_euler_steps(cfg):
    p = _problem(cfg, "D")
    train, val = ds.make_split(p, 200, 0, 1)
    assert list(train["input_names"]) == ["u", "w", "I"] and list(train["output_names"]) == ["u", "w"]
    for i in (0, 17, 199):
        u, w, I = train["X"][i]
        np.testing.assert_allclose(train["Y"][i], _euler_reference(p.model, [u, w], {"I": I}, 10), atol=1e-13)
    lo = np.array([p.ranges[n][0] for n in p.inputs])
    hi = np.array([p.ranges[n][1] for n in p.inputs])
    assert ((train["X"] >= lo) & (train["X"] <= hi)).all()
    assert len(val["X"]) == 20


def test_problem_a_pool_labels_and_limits(cfg):
    p = _problem(cfg, "A")
    train, val = ds.make_split(p, 1000, 0, 1)
    test, floor = ds.make_test(p, 1, 0)
    t_train, t_test, t_val = train["X"][:, 0], test["X"][:, 0], val["X"][:, 0]
    assert len(set(t_train)) == 1000 and len(t_test) == round(0.2 * 2001)
    assert not set(t_train) & set(t_test) and not set(t_val) & set(t_test) and not set(t_val) & set(t_train)
    for i in (0, 500, 999):
        k = round(t_train[i] / 0.01)
        assert abs(t_train[i] - k * 0.01) < 1e-12
        np.testing.assert_allclose(train["Y"][i], _euler_reference(p.model, [0.5, 0.0], {"I": 0.0}, k), atol=1e-13)
    with pytest.raises(InvalidInputError, match="larger than its design allows"):
        ds.make_split(p, 10000, 0, 1)
    assert 0 < floor["max_abs_err"] < 0.05


def test_training_sets_nest_and_are_deterministic(cfg):
    p = _problem(cfg, "C")
    small, vs = ds.make_split(p, 100, 0, 1)
    big, vb = ds.make_split(p, 1000, 0, 1)
    np.testing.assert_array_equal(small["X"], big["X"][:100])
    np.testing.assert_array_equal(small["Y"], big["Y"][:100])
    np.testing.assert_array_equal(vs["X"], vb["X"][:10])
    again, _ = ds.make_split(p, 100, 0, 1)
    assert sha256_array(again["X"]) == sha256_array(small["X"]) and sha256_array(again["Y"]) == sha256_array(small["Y"])
    other, _ = ds.make_split(p, 100, 5, 1)
    assert not np.array_equal(other["X"], small["X"])


def test_numpy_and_cpu_labels_agree(cfg):
    p = _problem(cfg, "C")
    from dataclasses import replace

    a, _ = ds.make_split(replace(p, backend="numpy"), 200, 0, 1)
    b, _ = ds.make_split(replace(p, backend="cpu"), 200, 0, 1)
    np.testing.assert_allclose(a["Y"], b["Y"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["B", "C"])
def test_test_set_is_whole_held_out_trajectories(cfg, name):
    p = _problem(cfg, name)
    test, floor = ds.make_test(p, cfg.datasets.test_seed, 0)
    n_traj = cfg.problem_spec(name)["test_trajectories"]
    assert test["X"].shape == (n_traj * 201, len(p.inputs))
    assert np.array_equal(np.bincount(test["trajectory"]), np.full(n_traj, 201))
    t = test["X"][:, 0].reshape(n_traj, 201)
    np.testing.assert_allclose(t, np.tile(np.arange(201) * 0.1, (n_traj, 1)), atol=1e-12)
    train, val = ds.make_split(p, 2000, 0, cfg.datasets.test_seed)
    ics_test = {tuple(r) for r in np.round(test["X"][:, 1:], 12)}
    ics_train = {tuple(r) for r in np.round(train["X"][:, 1:], 12)}
    ics_val = {tuple(r) for r in np.round(val["X"][:, 1:], 12)}
    assert not ics_test & ics_train and not ics_test & ics_val
    # the Euler floor: dt = 0.01 against solve_ivp is small but not zero
    assert 1e-6 < floor["mae"] < 1e-2 and floor["rows"] == n_traj * 200


def test_d_is_tested_on_c_trajectories(cfg):
    d = _problem(cfg, "D")
    c = _problem(cfg, "C")
    with pytest.raises(InvalidInputError, match="takes its test set from 'C'"):
        ds.make_test(d, 1, 0)
    td, _ = ds.make_test(d, 1, 0, {"C": c})
    tc, _ = ds.make_test(c, 1, 0)
    np.testing.assert_array_equal(td["X"], tc["X"])


def test_hh_m_trace_spikes_and_splits_80_20(cfg):
    p = _problem(cfg, "hh_m")
    X, Y = ds._pool(p)
    V = X[:, 1]
    assert X.shape == (4001, 2) and Y.shape == (4001, 1)
    assert V.max() > 0 and V.min() < -70  # action potentials, and after-hyperpolarisation
    assert ((Y >= 0) & (Y <= 1)).all()
    test, floor = ds.make_test(p, 1, 0)
    assert len(test["X"]) == round(0.2 * 4001)
    train, val = ds.make_split(p, 500, 0, 1)
    assert not set(test["X"][:, 0]) & set(train["X"][:, 0])
    assert floor["max_abs_err"] < 0.05
    segs = ds._protocol_segments(p)
    assert math.isclose(sum(s for s, _ in segs), 40.0) and sum(a > 0 for _, a in segs) == 2


def test_files_round_trip_with_checksums_and_detect_damage(cfg, tmp_path):
    ds.write_split(cfg, "B", 100, tmp_path / "n100/train.npz", tmp_path / "n100/val.npz")
    data, meta = load_dataset(tmp_path / "n100/train.npz")
    assert list(data["input_names"]) == ["t", "u0", "w0"] and data["X"].shape == (100, 3)
    assert meta["seed"] == 0 and meta["dt"] == 0.01 and meta["solver"]["dtype"] == "float64"
    assert meta["sha256"]["X"] == sha256_array(data["X"]) and meta["parameters"]["I"] == 0.08
    assert meta["provenance"] == {"problem": "B", "problem_fingerprint": cfg.problem("B").fingerprint,
                                  "part": "train", "n": 100, "seed": 0, "test_seed": cfg.datasets.test_seed,
                                  "val_fraction": 0.1}
    first = (tmp_path / "n100/train.npz").read_bytes()
    ds.write_split(cfg, "B", 100, tmp_path / "again/train.npz", tmp_path / "again/val.npz")
    assert (tmp_path / "again/train.npz").read_bytes() == first  # byte-identical files
    assert not list(tmp_path.rglob("*.tmp"))
    assert (tmp_path / "n100/train.npz").stat().st_mode & 0o044 == 0o044  # readable by the group and others
    # arrays that no longer match their sidecar, an edited sidecar, and a truncated file
    data["Y"][0, 0] += 1e-9
    np.savez(tmp_path / "again/changed.npz", **data)
    (tmp_path / "again/changed.npz").replace(tmp_path / "again/train.npz")
    with pytest.raises(InvalidInputError, match="sha256 of Y does not match"):
        load_dataset(tmp_path / "again/train.npz")
    side = tmp_path / "n100/train.json"
    m = json.loads(side.read_text())
    m["dt"] = 0.02
    side.write_text(json.dumps(m))
    with pytest.raises(InvalidInputError, match="train.json was changed after it was written"):
        load_dataset(tmp_path / "n100/train.npz")
    (tmp_path / "n100/val.npz").write_bytes((tmp_path / "n100/val.npz").read_bytes()[:200])
    with pytest.raises(InvalidInputError, match="is damaged"):
        load_dataset(tmp_path / "n100/val.npz")


def test_test_file_carries_the_solver_floor(cfg, tmp_path):
    ds.write_test(cfg, "C", tmp_path / "test.npz")
    data, meta = load_dataset(tmp_path / "test.npz")
    assert set(meta["euler_floor"]) >= {"mae", "max_abs_err", "rel_l2", "reference"}
    assert "trajectory" in data


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["problems"]["B"]["ranges"].__setitem__("u0", [0.5, 0.5]), r"problems\.B\.ranges\.u0: empty"),
        (lambda c: c["problems"]["B"].__setitem__("model", "fhx"), r"problems\.B\.model: unknown model"),
        (lambda c: c["problems"]["B"].__setitem__("outptus", ["u"]), r"problems\.B.*'outptus' was unexpected"),
        (lambda c: c["datasets"].__setitem__("sizes", [-5]), r"datasets\.sizes\.0"),
        (lambda c: c["datasets"].__setitem__("test_seed", 0), r"datasets\.test_seed: must differ"),
        (lambda c: c["problems"]["C"].__setitem__("inputs", ["t", "u0", "v0", "I"]), r"'v0' is neither"),
        (lambda c: c["problems"]["D"].__setitem__("test_from", "Z"), r"problems\.D\.test_from"),
        (lambda c: c["problems"]["D"].update(inputs=["w", "u", "I"], outputs=["w", "u"]),
         r"problems\.D\.outputs: \['w', 'u'\] must be C's outputs \['u', 'w'\] in their order"),
    ],
)
def test_bad_configs_fail_naming_the_key(edit, message):
    c = load_config().as_dict()
    edit(c)
    with pytest.raises(InvalidInputError, match=message):
        validate_config(c)


def test_bad_requests_fail_before_any_work(cfg, tmp_path):
    with pytest.raises(InvalidInputError, match=r"unknown problem 'E'; valid: \['A', 'B', 'C', 'D', 'hh_m'\]"):
        ds.write_split(cfg, "E", 100, tmp_path / "t.npz", tmp_path / "v.npz")
    for n in (0, -3):
        with pytest.raises(InvalidInputError, match="positive integer"):
            ds.write_split(cfg, "B", n, tmp_path / "t.npz", tmp_path / "v.npz")
    assert not list(tmp_path.iterdir())


def test_cli_reports_errors_without_a_traceback(capsys, tmp_path):
    rc = ds.main(["split", "--problem", "Q", "--n", "10", "--train", str(tmp_path / "a.npz"), "--val", str(tmp_path / "b.npz")])
    assert rc == 2 and "unknown problem 'Q'" in capsys.readouterr().err
