"""Rules figure_*: one script, dispatched on the rule's name; the figures live in benchmarks.figures."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks import figures as F  # noqa: E402

rule, out, cfg = snakemake.rule, snakemake.output, snakemake.config


def load(checkpoint):
    """(network, its provenance): what a checkpoint is comes from what it records, not where it lies."""
    from surrogates.network import load_checkpoint

    net, meta = load_checkpoint(checkpoint)
    return net.eval(), meta["provenance"]


def test_predictions(test_npz, checkpoints) -> dict:
    """kind -> each surrogate's prediction of the test rows: a direct network evaluates them, an iterative one
    (trained on a step problem) is rolled out from each test trajectory's first row."""
    import torch

    from surrogates.problems import problem_from_config

    with np.load(test_npz) as z:
        X, traj = z["X"], F.test_trajectory_ids(z)
    preds = {}
    for c in checkpoints:
        net, prov = load(c)
        p = problem_from_config(prov["problem"], cfg)
        if p.kind == "step":
            preds[prov["surrogate"]] = F.rollout_predictions(net, p, problem_from_config(p.test_from, cfg), X,
                                                             int(traj.max()) + 1)
        else:
            with torch.no_grad():
                preds[prov["surrogate"]] = net(torch.as_tensor(X, dtype=torch.float32)).numpy()
    return preds


def hh_m():
    import torch

    from surrogates.datasets import trace_states
    from surrogates.problems import problem_from_config

    p = problem_from_config("hh_m", cfg)
    t, S = trace_states(p)
    with np.load(snakemake.input.test) as z:
        test_t = z["X"][:, p.inputs.index("t")]
    X = torch.tensor(np.stack([t, S[:, 0]], axis=1), dtype=torch.float32)
    preds, losses = {}, {}
    for m in snakemake.input.models:
        net, prov = load(m)
        with torch.no_grad():
            preds[prov["surrogate"]] = net(X).numpy()[:, 0]
        losses[prov["surrogate"]] = pd.read_csv(Path(m).with_name("losses.csv"))
    gate = p.model.state_names.index(p.outputs[0])
    F.hh_m_figure(t, S[:, 0], S[:, gate], test_t, preds, losses, out.png, out.pdf, F.variable_units(cfg, "hh_m"))


if rule == "figure_error_vs_size":
    F.error_vs_size(snakemake.input.metrics, snakemake.input.accuracy, out.png, out.pdf, F.error_units(cfg))
elif rule == "figure_pinn_vs_ddnn":
    F.pinn_vs_ddnn(snakemake.input.metrics, out.png, out.pdf, F.error_units(cfg))
elif rule == "figure_training_curves":
    F.training_curves(list(snakemake.input.losses), list(snakemake.input.metrics), out.png, out.pdf,
                      F.error_units(cfg))
elif rule == "figure_rollout_error":
    from core.io import read_json

    step = read_json(snakemake.input[0], "metrics file")["problem"]
    F.rollout_error(list(snakemake.input), out.png, out.pdf, F.variable_units(cfg, step)["t"], F.error_units(cfg)[step])
elif rule == "figure_trajectories":
    F.trajectories(snakemake.input.test, test_predictions(snakemake.input.test, snakemake.input.models), out.png,
                   out.pdf, F.variable_units(cfg, snakemake.params.problem))
elif rule == "figure_hh_m":
    hh_m()
elif rule == "figure_speed":
    problem = snakemake.params.speed["problem"]
    F.speedup_vs_n(snakemake.input.raw, out.n_png, out.n_pdf)
    F.speedup_vs_k(snakemake.input.raw, out.k_png, out.k_pdf)
    F.time_vs_error(snakemake.input.raw, snakemake.input.accuracy, problem, out.e_png, out.e_pdf,
                    F.error_units(cfg)[problem])
elif rule == "figure_solver_throughput":
    F.solver_throughput(snakemake.input.csv, out.png, out.pdf)
else:
    raise ValueError(f"no figure for rule {rule!r}")
