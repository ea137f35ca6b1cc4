"""The single model definition and what is derived from it."""
import sys

import mpmath
import numpy as np
import pytest
import torch

import solvers
from solvers import CellModel, Parameter, State
from solvers.model import _vtrap_array

MODELS = solvers.list_models()  # every registered model: a new model file is tested here with no edit

AP_MODEL = """
from solvers import CellModel, Parameter, State

MODEL = CellModel(
    name="{name}",
    description="Aliev-Panfilov (dimensionless)",
    states={{"u": State(0.0, "1"), "v": State(0.0, "1")}},
    parameters={{"k": Parameter(8.0, "1"), "a": Parameter(0.15, "1"), "eps0": Parameter(0.002, "1"),
                 "mu1": Parameter(0.2, "1"), "mu2": Parameter(0.3, "1")}},
    rhs={{"u": "k*u*(1 - u)*(u - a) - u*v", "v": "(eps0 + mu1*v/(u + mu2))*(-v - k*u*(u - a - 1))"}},
    typical_box={{"u": (0.0, 1.0), "v": (0.0, 1.0)}},
)
"""


def _random_states(model, n, rng):
    return model.sample_typical(n, rng)[0]


def test_registry_lists_models_and_rejects_unknown():
    assert {"fhn", "fhn_classic", "hh"} <= set(MODELS) and MODELS == sorted(MODELS)
    with pytest.raises(ValueError, match=r"unknown model 'fhm'.*valid: \['fhn', 'fhn_classic', 'hh'"):
        solvers.get_model("fhm")


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry found again from scratch, and forgotten afterwards (nothing found here stays)."""
    from solvers import models

    monkeypatch.setattr(models, "_BUILTIN", None)
    monkeypatch.setattr(models, "_FOLDERS", {})
    monkeypatch.setattr(models, "_ADDED", {})
    return models


def test_a_file_in_the_models_package_defining_model_is_registered_with_no_other_edit(fresh_registry, tmp_path,
                                                                                      monkeypatch):
    """pkgutil discovery over the package's folders: here a temporary folder added to the package's path stands
    for solvers/models/ (so nothing is written into the checkout)."""
    (tmp_path / "aliev_panfilov.py").write_text(AP_MODEL.format(name="aliev_panfilov"))
    (tmp_path / "helpers.py").write_text("X = 1\n")  # a module without MODEL is not a model
    monkeypatch.setattr(fresh_registry, "__path__", [*fresh_registry.__path__, str(tmp_path)])
    try:
        assert solvers.list_models() == ["aliev_panfilov", "fhn", "fhn_classic", "hh"]
        m = solvers.get_model("aliev_panfilov")
        assert m.state_names == ("u", "v") and m.param_names == ("k", "a", "eps0", "mu1", "mu2")
        _, Y = solvers.simulate("aliev_panfilov", [[0.3, 0.0]], 5.0, 0.01, 100)
        assert np.isfinite(Y).all() and Y[-1, 0, 0] > 0.5  # above threshold a = 0.15: it fires
    finally:
        for name in ("solvers.models.aliev_panfilov", "solvers.models.helpers"):
            sys.modules.pop(name, None)


def test_models_in_a_named_folder_are_found_there_and_only_there(fresh_registry, tmp_path):
    folder = tmp_path / "my_models"
    folder.mkdir()
    (folder / "ap.py").write_text(AP_MODEL.format(name="ap"))
    (folder / "_private.py").write_text("raise RuntimeError('never imported')\n")
    (folder / "notes.txt").write_text("not a model file\n")
    assert "ap" not in solvers.list_models()
    with pytest.raises(ValueError, match="unknown model 'ap'"):
        solvers.get_model("ap")
    assert solvers.list_models([folder]) == ["ap", "fhn", "fhn_classic", "hh"]
    assert solvers.get_model("ap", paths=[str(folder)]).name == "ap"
    assert solvers.get_model("ap", paths=[folder]) is solvers.get_model("ap", paths=[folder])  # read once


def test_a_bad_model_folder_or_file_is_refused_naming_it(fresh_registry, tmp_path):
    from solvers.models import load_model_file

    with pytest.raises(ValueError, match=r"model folder .*nowhere: not a folder"):
        solvers.list_models([tmp_path / "nowhere"])
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "fhn_again.py").write_text(AP_MODEL.format(name="fhn"))
    with pytest.raises(ValueError, match=r"two models are named 'fhn': .*solvers/models.* and model folder"):
        solvers.get_model("fhn", paths=[clash])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "typo.py").write_text(AP_MODEL.format(name="typo").replace("u*v", "u*q"))
    with pytest.raises(ValueError, match=r"model 'typo'.*unknown names \['q'\]"):
        solvers.list_models([broken])
    (tmp_path / "wrong.py").write_text("MODEL = 3\n")
    with pytest.raises(ValueError, match=r"wrong.py: MODEL is a int, not a solvers.CellModel"):
        load_model_file(tmp_path / "wrong.py")
    with pytest.raises(ValueError, match=r"no loader for '.xyz' files"):
        load_model_file(tmp_path / "model.xyz")


def test_every_registered_model_declares_a_typical_box(rng):
    for name in MODELS:
        m = solvers.get_model(name)
        y0, params = m.sample_typical(50, rng)
        lo, hi = (np.array([m.typical_box[s][i] for s in m.state_names]) for i in (0, 1))
        assert y0.shape == (50, m.n_states) and (y0 >= lo).all() and (y0 <= hi).all(), name
        assert set(params) <= set(m.param_names)
    with pytest.raises(ValueError, match=r"typical_box needs every state \['u'\].*missing: \['u'\]"):
        CellModel("x", "", {"u": State(0.0, "1")}, {"a": Parameter(1.0, "1")}, {"u": "a*u"}, typical_box={"a": (0, 1)})
    with pytest.raises(ValueError, match=r"unknown: \['z'\]"):
        CellModel("x", "", {"u": State(0.0, "1")}, {}, {"u": "u"}, typical_box={"u": (0, 1), "z": (0, 1)})
    with pytest.raises(ValueError, match=r"typical_box\['u'\] = \(1, 0\) is not a range"):
        CellModel("x", "", {"u": State(0.0, "1")}, {}, {"u": "u"}, typical_box={"u": (1, 0)})
    with pytest.raises(ValueError, match="declares no typical_box"):
        CellModel("x", "", {"u": State(0.0, "1")}, {}, {"u": "u"}).sample_typical(3, rng)


def test_fhn_rhs_is_the_papers_form(rng):
    m = solvers.get_model("fhn")
    y = rng.uniform(-1, 1, size=(50, 2))
    I = rng.uniform(0.08, 0.12, size=50)
    u, w = y.T
    expected = np.stack([10 * (u * (u - 0.4) * (1 - u) - w + I), 0.04 * u - 0.16 * w], axis=-1)
    np.testing.assert_allclose(m.numpy_rhs(y, {"I": I}), expected, rtol=1e-13, atol=1e-15)


def test_fhn_classic_rhs_is_the_readmes_form(rng):
    m = solvers.get_model("fhn_classic")
    y = rng.uniform(-2, 2, size=(50, 2))
    u, w = y.T
    a, b, c, tau, I = 0.7, 0.8, 1.0, 12.5, 0.5
    expected = np.stack([c * (u - u**3 / 3 - w) + I, (u + a - b * w) / tau], axis=-1)
    np.testing.assert_allclose(m.numpy_rhs(y), expected, rtol=1e-13, atol=1e-15)


def test_hh_rates_match_the_seed_notebook(rng):
    m = solvers.get_model("hh")
    V = rng.uniform(-90, 50, size=200)
    y = np.stack([V, np.full_like(V, 0.3), np.full_like(V, 0.6), np.full_like(V, 0.4)], axis=-1)
    a_m = 0.1 * (V + 40.0) / (1.0 - np.exp(-(V + 40.0) / 10.0))
    b_m = 4.0 * np.exp(-(V + 65.0) / 18.0)
    np.testing.assert_allclose(m.numpy_rhs(y)[:, 1], a_m * (1 - 0.3) - b_m * 0.3, rtol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_numpy_and_torch_rhs_agree(name, rng):
    m = solvers.get_model(name)
    y, params = m.sample_typical(64, rng)
    ref = m.numpy_rhs(y, params)
    got = m.torch_rhs(torch.tensor(y), {k: torch.tensor(v) for k, v in params.items()}).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_float32_rhs_stays_float32(name, rng):
    m = solvers.get_model(name)
    y = _random_states(m, 8, rng).astype(np.float32)
    assert m.numpy_rhs(y).dtype == np.float32
    assert m.torch_rhs(torch.tensor(y)).dtype == torch.float32


def test_torch_rhs_follows_per_row_parameters_and_is_differentiable():
    m = solvers.get_model("fhn")
    y = torch.tensor([[0.3, 0.05], [0.3, 0.05]], dtype=torch.float64, requires_grad=True)
    I = torch.tensor([0.08, 0.12], dtype=torch.float64)
    d = m.torch_rhs(y, {"I": I})
    assert (d[1, 0] - d[0, 0]).item() == pytest.approx(10 * 0.04)
    (g,) = torch.autograd.grad(d[:, 0].sum(), y)
    u = 0.3  # d(du/dt)/du = 10 (-3u^2 + 2.8u - 0.4)
    assert g[0, 0].item() == pytest.approx(10 * (-3 * u**2 + 2.8 * u - 0.4))
    assert g[0, 1].item() == pytest.approx(-10.0)


@pytest.mark.parametrize("V", [-40.0, -55.0])
def test_hh_removable_singularities_give_no_nan_in_values_or_gradients(V):
    m = solvers.get_model("hh")
    y = np.array([[V, 0.1, 0.6, 0.3]])
    assert np.isfinite(m.numpy_rhs(y)).all()
    yt = torch.tensor(y, requires_grad=True)
    d = m.torch_rhs(yt)
    (g,) = torch.autograd.grad(d.sum(), yt)
    assert torch.isfinite(d).all() and torch.isfinite(g).all()
    # continuity across the singular point
    eps = np.array([[1e-7, 0, 0, 0]])
    np.testing.assert_allclose(m.numpy_rhs(y), m.numpy_rhs(y + eps), rtol=1e-6, atol=1e-9)


def test_vtrap_keeps_full_precision_next_to_the_singularity():
    mpmath.mp.dps = 40
    x = np.concatenate([[0.0], np.geomspace(1e-12, 5.0, 80), -np.geomspace(1e-12, 5.0, 80)])
    exact = np.array([float(mpmath.mpf(v) / (1 - mpmath.exp(-mpmath.mpf(v) / 10))) if v else 10.0 for v in x])
    got64 = _vtrap_array(np, np.float64)(x, np.float64(10.0))
    np.testing.assert_allclose(got64, exact, rtol=4e-16 * 8)
    got32 = _vtrap_array(np, np.float32)(x.astype(np.float32), np.float32(10.0))
    np.testing.assert_allclose(got32, exact, rtol=6e-8 * 8)
    with np.errstate(invalid="ignore"):
        naive = x / (1 - np.exp(-x / 10))  # the seed notebook's formula: NaN at 0, imprecise next to it
    assert np.isnan(naive[0]) and np.abs(naive[1:] / exact[1:] - 1).max() > 1e-6


def test_model_declaration_is_validated():
    st = {"u": State(0.0, "1")}
    with pytest.raises(ValueError, match=r"unknown names \['q'\]"):
        CellModel("x", "", st, {"a": Parameter(1.0, "1")}, {"u": "a*u + q"})
    with pytest.raises(ValueError, match=r"unknown names \['sinh'\]"):
        CellModel("x", "", st, {}, {"u": "sinh(u)"})
    with pytest.raises(ValueError, match="one expression per state"):
        CellModel("x", "", st, {}, {"v": "u"})
    with pytest.raises(ValueError, match="cannot be a variable name"):
        CellModel("x", "", {"float": State(0.0, "1")}, {}, {"float": "1"})
    with pytest.raises(ValueError, match="used twice"):
        CellModel("x", "", st, {"u": Parameter(1.0, "1")}, {"u": "u"})
    with pytest.raises(ValueError, match="cannot parse"):
        CellModel("x", "", st, {}, {"u": "u +* 2"})
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['J'\]"):
        solvers.get_model("fhn").numpy_rhs(np.zeros((1, 2)), {"J": 1.0})


def test_generated_code_comes_from_the_definition():
    m = solvers.get_model("hh")
    c32 = "\n".join(m.c_statements("float32"))
    c64 = "\n".join(m.c_statements("float64"))
    assert "expf(" in c32 and "vtrapf(" in c32 and "0.07f" in c32
    assert "expf(" not in c64 and "exp(" in c64 and "0.07f" not in c64
    assert any(line.startswith("d_V = ") for line in m.python_statements())
    assert m.describe()["parameters"]["g_Na"] == {"default": 120.0, "units": "mS/cm^2"}


@pytest.mark.parametrize("name", MODELS)
def test_the_closed_form_jacobian_equals_autograd(name, rng):
    """torch_rhs_jacobian: f exactly as torch_rhs, J = df/dy as autograd gives it (HH at and around the rates'
    removable singularities too, on both sides of the derivative's series switch)."""
    m = solvers.get_model(name)
    y, params = m.sample_typical(64, rng)
    params = {k: torch.tensor(v) for k, v in params.items()}
    if name == "hh":
        V = np.array([-40.0, -55.0, -40.0 + 1e-9, -55.0 - 1e-6, -40.0 + 0.09, -40.0 - 0.11, -55.0 + 0.2, -40.0 + 1e-3])
        y[: len(V), 0] = V
    yt = torch.tensor(y, requires_grad=True)
    f, J = m.torch_rhs_jacobian(yt, params)
    ref = m.torch_rhs(yt, params)
    assert torch.equal(f, ref.detach())
    want = torch.stack([torch.autograd.grad(ref[:, j].sum(), yt, retain_graph=True)[0] for j in range(m.n_states)], -2)
    assert J.shape == (64, m.n_states, m.n_states) and torch.isfinite(J).all()
    torch.testing.assert_close(J, want, rtol=1e-9, atol=1e-12)
    f32, J32 = m.torch_rhs_jacobian(yt.detach().float(), {k: v.float() for k, v in params.items()})
    assert J32.dtype == torch.float32
    torch.testing.assert_close(J32.double(), want, rtol=2e-4, atol=1e-4 * float(want.abs().max()))


def test_per_row_parameters_reach_the_jacobian():
    m = solvers.get_model("fhn_classic")
    y = torch.tensor([[0.3, 0.05], [0.3, 0.05]], dtype=torch.float64)
    _, J = m.torch_rhs_jacobian(y, {"tau": torch.tensor([10.0, 20.0], dtype=torch.float64)})
    assert J[:, 1, 0].tolist() == pytest.approx([0.1, 0.05])  # d(dw/dt)/du = 1/tau
    assert J[:, 0, 1].tolist() == pytest.approx([-1.0, -1.0])  # a constant entry, broadcast to the rows


def test_a_right_hand_side_sympy_cannot_differentiate_has_no_closed_form_jacobian():
    m = CellModel("odd", "vtrap with a state-dependent scale", {"x": State(0.0, "1")}, {"k": Parameter(1.0, "1")},
                  {"x": "vtrap(x, 2 + x) - k"})
    assert not m.has_jacobian()
    with pytest.raises(ValueError, match="no closed-form Jacobian"):
        m.torch_rhs_jacobian(torch.zeros(3, 1))
