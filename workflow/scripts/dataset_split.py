"""Rule dataset_split: training and validation sets of one (problem, n)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
from surrogates.datasets import write_split  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

write_split(study, snakemake.wildcards.problem, int(snakemake.wildcards.n),
            snakemake.output.train, snakemake.output.val)
print(f"wrote {snakemake.output.train} and {snakemake.output.val}")
