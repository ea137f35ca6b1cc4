"""Rule dataset_split: training and validation sets of one (problem, n)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
from surrogates.datasets import write_split  # noqa: E402

write_split(snakemake.config, snakemake.wildcards.problem, int(snakemake.wildcards.n),
            snakemake.output.train, snakemake.output.val)
print(f"wrote {snakemake.output.train} and {snakemake.output.val}")
