"""Rule train: one surrogate, scored on the held-out test set."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import torch  # noqa: E402

from training.train import train_surrogate  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

torch.set_num_threads(snakemake.threads)
w, i = snakemake.wildcards, snakemake.input
r = train_surrogate(study, w.problem, w.surrogate, int(w.n), int(w.seed), Path(i.train).parents[1],
                    Path(snakemake.output.metrics).parent, architecture=w.arch, train_path=i.train, val_path=i.val,
                    test_path=i.test)
print(f"test MAE {r['mae']:.3e}, max {r['max_abs_err']:.3e} ({r['train_seconds']:.1f} s)")
