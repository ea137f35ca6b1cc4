"""Rule train_cohort: the seeds of one run trained together (stacked, training/cohort.py; with training.side_by_side
on a GPU, those that cannot be stacked in threads, training/side_by_side.py), each scored alone."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import torch  # noqa: E402

from training.train import train_surrogates  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

torch.set_num_threads(snakemake.threads)
w, i = snakemake.wildcards, snakemake.input
outs = [Path(m).parent for m in snakemake.output.metrics]
results = train_surrogates(study, w.problem, w.surrogate, int(w.n), snakemake.params.seeds,
                           Path(i.train).parents[1], outs, architecture=w.arch, train_path=i.train, val_path=i.val,
                           test_path=i.test)
for r in results:
    print(f"seed {r['seed']}: test MAE {r['mae']:.3e}, max {r['max_abs_err']:.3e} "
          f"({r['train_seconds']:.1f} s, cohort of {r['cohort']})")
