"""Rules figure_*: one script, dispatched on the rule's name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks import figures as F  # noqa: E402

rule, out = snakemake.rule, snakemake.output


def kind_of(checkpoint):
    """The surrogate kind a checkpoint records (its provenance), not where it lies."""
    from surrogates.network import load_checkpoint

    return load_checkpoint(checkpoint)[1]["provenance"]["surrogate"]


if rule == "figure_error_vs_size":
    F.error_vs_size(snakemake.input[0], out.png, out.pdf)
elif rule == "figure_training_curves":
    F.training_curves(list(snakemake.input.losses), list(snakemake.input.metrics), out.png, out.pdf)
elif rule == "figure_rollout_error":
    F.rollout_error(list(snakemake.input), out.png, out.pdf)
elif rule == "figure_trajectories":
    F.trajectories(snakemake.input.test, {kind_of(m): m for m in snakemake.input.models}, out.png, out.pdf)
elif rule == "figure_hh_m":
    import torch

    from surrogates.datasets import trace_states
    from surrogates.network import load_checkpoint
    from surrogates.problems import problem_from_config

    p = problem_from_config("hh_m", snakemake.config)
    t, S = trace_states(p)
    with np.load(snakemake.input.test) as z:
        test_t = z["X"][:, 0]
    X = torch.tensor(np.stack([t, S[:, 0]], axis=1), dtype=torch.float32)
    preds, losses = {}, {}
    for m in snakemake.input.models:
        kind = kind_of(m)
        net = load_checkpoint(m)[0].eval()
        with torch.no_grad():
            preds[kind] = net(X).numpy()[:, 0]
        losses[kind] = pd.read_csv(Path(m).with_name("losses.csv"))
    F.hh_m_figure(t, S[:, 0], S[:, p.model.state_names.index("m")], test_t, preds, losses, out.png, out.pdf)
elif rule == "figure_speed":
    sp = snakemake.params.speed
    F.speedup_vs_n(snakemake.input.raw, sp["n_outputs"], out.n_png, out.n_pdf)
    F.speedup_vs_k(snakemake.input.raw, out.k_png, out.k_pdf)
    F.time_vs_error(snakemake.input.raw, snakemake.input.accuracy, sp["problem"], sp["n_outputs"], out.e_png, out.e_pdf)
else:
    raise ValueError(f"no figure for rule {rule!r}")
