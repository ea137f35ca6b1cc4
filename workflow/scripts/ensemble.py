"""Rule ensemble: the mean of the seeds' networks, scored on the held-out test set."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import torch  # noqa: E402

from surrogates.ensemble import score_ensemble  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

torch.set_num_threads(snakemake.threads)
w, i = snakemake.wildcards, snakemake.input
r = score_ensemble(study, w.problem, w.surrogate, int(w.n), w.arch, list(i.models), i.test,
                   snakemake.output.metrics)
print(f"{r['surrogate']} of seeds {r['members']}: test MAE {r['mae']:.3e}, max {r['max_abs_err']:.3e}")
