"""Hodgkin-Huxley squid giant axon, membrane potential in mV with rest near -65 mV.

The rate functions are those of the seed notebook (shared/seeds/000_*), shifted to the -65 mV resting
convention. ``alpha_m`` and ``alpha_n`` have removable singularities at V = -40 and V = -55 mV; ``vtrap``
evaluates them without NaN or loss of precision there.
"""
from ..model import CellModel, Parameter, State

MODEL = CellModel(
    name="hh",
    description="Hodgkin-Huxley squid axon (mV, ms, uA/cm^2), rest near -65 mV, stimulus current I_stim",
    states={
        "V": State(-65.0, "mV", "membrane potential"),
        "m": State(0.05293, "1", "sodium activation gate"),
        "h": State(0.59612, "1", "sodium inactivation gate"),
        "n": State(0.31768, "1", "potassium activation gate"),
    },
    parameters={
        "I_stim": Parameter(0.0, "uA/cm^2", "stimulus current (positive depolarises)"),
        "C_m": Parameter(1.0, "uF/cm^2", "membrane capacitance"),
        "g_Na": Parameter(120.0, "mS/cm^2"),
        "g_K": Parameter(36.0, "mS/cm^2"),
        "g_L": Parameter(0.3, "mS/cm^2"),
        "E_Na": Parameter(50.0, "mV"),
        "E_K": Parameter(-77.0, "mV"),
        "E_L": Parameter(-54.387, "mV"),
    },
    intermediates={
        "alpha_m": "0.1*vtrap(V + 40, 10)",
        "beta_m": "4*exp(-(V + 65)/18)",
        "alpha_h": "0.07*exp(-(V + 65)/20)",
        "beta_h": "1/(1 + exp(-(V + 35)/10))",
        "alpha_n": "0.01*vtrap(V + 55, 10)",
        "beta_n": "0.125*exp(-(V + 65)/80)",
        "i_Na": "g_Na*m**3*h*(V - E_Na)",
        "i_K": "g_K*n**4*(V - E_K)",
        "i_L": "g_L*(V - E_L)",
    },
    rhs={
        "V": "(I_stim - i_Na - i_K - i_L)/C_m",
        "m": "alpha_m*(1 - m) - beta_m*m",
        "h": "alpha_h*(1 - h) - beta_h*h",
        "n": "alpha_n*(1 - n) - beta_n*n",
    },
    time_units="ms",
    typical_box={"V": (-70.0, -35.0), "m": (0.0, 0.3), "h": (0.3, 0.7), "n": (0.25, 0.5),  # below and above
                 "I_stim": (0.0, 15.0)},  # threshold: some cells spike
    reference="Hodgkin & Huxley (1952), J. Physiol. 117:500",
)
