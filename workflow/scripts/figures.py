"""Rules figure_*: one script, dispatched on the rule's name; the figures live in benchmarks.figures."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks import figures as F  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

rule, out = snakemake.rule, snakemake.output


def load(checkpoint, run):
    return F.load_network(study, checkpoint, run)


def load_test(path, problem):
    return F.load_test(study, path, problem)


def test_predictions(test_npz, checkpoints) -> dict:
    """kind -> each surrogate's prediction of the test rows: a direct network evaluates them, an iterative one
    (trained on a step problem) is rolled out from each test trajectory's first row."""
    import torch

    z = load_test(test_npz, snakemake.params.problem)
    X, traj = z["X"], F.test_trajectory_ids(z)
    preds = {}
    for c, run in zip(checkpoints, snakemake.params.runs, strict=True):
        net, prov = load(c, run)
        p = study.problem(prov["problem"])
        if p.kind == "step":
            preds[prov["surrogate"]] = F.rollout_predictions(net, p, study.problem(p.test_from), X,
                                                             int(traj.max()) + 1)
        else:
            with torch.no_grad():
                preds[prov["surrogate"]] = net(torch.as_tensor(X, dtype=torch.float32)).numpy()
    return preds


def hh_m():
    import torch

    from surrogates.datasets import trace_states

    p = study.problem("hh_m")
    t, S = trace_states(p)
    test_t = load_test(snakemake.input.test, "hh_m")["X"][:, p.inputs.index("t")]
    X = torch.tensor(np.stack([t, S[:, 0]], axis=1), dtype=torch.float32)
    preds, losses = {}, {}
    for m, run in zip(snakemake.input.models, snakemake.params.runs, strict=True):
        net, prov = load(m, run)
        with torch.no_grad():
            preds[prov["surrogate"]] = net(X).numpy()[:, 0]
        losses[prov["surrogate"]] = pd.read_csv(Path(m).with_name("losses.csv"))
    gate = p.model.state_names.index(p.outputs[0])
    F.hh_m_figure(t, S[:, 0], S[:, gate], test_t, preds, losses, out.png, out.pdf, F.variable_units(study, "hh_m"))


if rule == "figure_error_vs_size":
    F.error_vs_size(snakemake.input.metrics, snakemake.input.accuracy, out.png, out.pdf, F.error_units(study))
elif rule == "figure_pinn_vs_ddnn":
    F.pinn_vs_ddnn(snakemake.input.metrics, out.png, out.pdf, F.error_units(study))
elif rule == "figure_training_curves":
    F.training_curves(list(snakemake.input.losses), list(snakemake.input.metrics), out.png, out.pdf,
                      F.error_units(study))
elif rule == "figure_rollout_error":
    from core.io import read_record

    step = read_record(snakemake.input[0], "metrics file")["problem"]
    F.rollout_error(list(snakemake.input), out.png, out.pdf, F.variable_units(study, step)["t"], F.error_units(study)[step])
elif rule == "figure_trajectories":
    F.trajectories(snakemake.input.test, test_predictions(snakemake.input.test, snakemake.input.models), out.png,
                   out.pdf, F.variable_units(study, snakemake.params.problem))
elif rule == "figure_hh_m":
    hh_m()
elif rule == "figure_speed":
    problem = snakemake.params.speed["problem"]
    F.speedup_vs_n(snakemake.input.raw, out.n_png, out.n_pdf)
    F.speedup_vs_k(snakemake.input.raw, out.k_png, out.k_pdf)
    F.time_vs_error(snakemake.input.raw, snakemake.input.accuracy, problem, out.e_png, out.e_pdf,
                    F.error_units(study)[problem])
elif rule == "figure_solver_throughput":
    F.solver_throughput(snakemake.input.csv, out.png, out.pdf)
else:
    raise ValueError(f"no figure for rule {rule!r}")
