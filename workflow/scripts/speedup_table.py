"""Rule speedup_table: the contract's columns from the raw timings."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import pandas as pd  # noqa: E402

from benchmarks.tables import speedup_table, write_table  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated


problem = study.problem(study.speed.problem)
df = speedup_table(pd.read_csv(snakemake.input[0]))
write_table(df, snakemake.output.csv, snakemake.output.md, snakemake.output.tex,
            caption="Surrogate inference vs the forward-Euler solver on the same N x K outputs (medians, end to end; "
                    "speedup > 1: the surrogate is faster). mae: held-out test MAE of the surrogate on problem "
                    f"{problem.name} ({problem.time_range}).")
print(df.to_string())
