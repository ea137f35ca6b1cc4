"""FitzHugh-Nagumo in the form used by the paper's experiments (dimensionless)."""
from ..model import CellModel, Parameter, State

MODEL = CellModel(
    name="fhn",
    description="FitzHugh-Nagumo, the paper's form: excitable for I below about 0.13 (Hopf bifurcation)",
    states={
        "u": State(0.0, "1", "fast, voltage-like variable"),
        "w": State(0.0, "1", "slow recovery variable"),
    },
    parameters={"I": Parameter(0.08, "1", "applied current")},
    rhs={
        "u": "10*(u*(u - 0.4)*(1 - u) - w + I)",
        "w": "0.04*u - 0.16*w",
    },
    time_units="1",
    typical_box={"u": (-0.1, 0.81), "w": (0.0, 0.12), "I": (0.08, 0.12)},  # the paper's box (problem C)
    reference="Werneck et al., neural-network surrogates of the FitzHugh-Nagumo model (see shared/REFERENCE.md)",
)
