"""Rule dataset_test: the held-out test set of one problem, with the Euler solver floor."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
from surrogates.datasets import write_test  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

write_test(study, snakemake.wildcards.problem, snakemake.output.test)
print(f"wrote {snakemake.output.test}")
