"""FitzHugh-Nagumo in its classic form (the Pinn-Torch README's physics-informed example)."""
from ..model import CellModel, Parameter, State

MODEL = CellModel(
    name="fhn_classic",
    description="FitzHugh-Nagumo, classic form du/dt = c(u - u^3/3 - w) + I, dw/dt = (u + a - b w)/tau",
    states={
        "u": State(0.0, "1", "fast, voltage-like variable"),
        "w": State(0.0, "1", "slow recovery variable"),
    },
    parameters={
        "a": Parameter(0.7, "1"),
        "b": Parameter(0.8, "1"),
        "c": Parameter(1.0, "1"),
        "tau": Parameter(12.5, "1", "time scale of w"),
        "I": Parameter(0.5, "1", "applied current"),
    },
    rhs={
        "u": "c*(u - u**3/3 - w) + I",
        "w": "(u + a - b*w)/tau",
    },
    time_units="1",
    typical_box={"u": (-2.0, 2.0), "w": (-1.0, 2.0)},  # around the limit cycle (I = 0.5)
    reference="FitzHugh (1961); Nagumo et al. (1962)",
)
