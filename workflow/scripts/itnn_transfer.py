"""Rule itnn_transfer: an ITNN's seeds (and their mean) rolled out over another trajectory problem's test set."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import torch  # noqa: E402

from surrogates.transfer import score_transfer  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

torch.set_num_threads(snakemake.threads)
w, i = snakemake.wildcards, snakemake.input
r = score_transfer(study, w.problem, int(w.n), w.arch, list(i.models), w.target, i.test,
                   snakemake.output.metrics)
for run in r["runs"]:
    print(f"{w.problem} itnn seed {run['seed']} on {w.target}: test MAE {run['mae']:.3e}, max {run['max_abs_err']:.3e}")
if r["ensemble"]:
    print(f"ensemble on {w.target}: test MAE {r['ensemble']['mae']:.3e}, max {r['ensemble']['max_abs_err']:.3e}")
