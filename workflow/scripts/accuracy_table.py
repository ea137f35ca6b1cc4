"""Rule accuracy_table: one row per (problem, surrogate, n, arch) over seeds, with each problem's Euler floor.
Every metrics file and test sidecar is checked against what it stands for before it is tabulated."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
from benchmarks.tables import accuracy_by_output, accuracy_table, floor_references, write_table  # noqa: E402
from core.machine import describe_machine  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

df = accuracy_table(snakemake.input.metrics, snakemake.input.floors, study)
write_table(df, snakemake.output.csv, snakemake.output.md, snakemake.output.tex,
            caption=f"Test-set accuracy (t = 0 excluded), mean over seeds; <kind>_ensemble: the mean of the seeds' "
                    f"networks as one surrogate (seeds: its members; train seconds: theirs, summed); "
                    f"euler_floor: the forward-Euler "
                    f"(dt = {study.solver.dt:g}) labels against "
                    f"{'; '.join(floor_references(snakemake.input.floors)) or 'a high-accuracy solution'}. "
                    f"Tabulated on: {describe_machine()}.")
print(df.to_string())
by = accuracy_by_output(snakemake.input.metrics, snakemake.input.floors, study)
write_table(by, snakemake.output.by_output_csv, snakemake.output.by_output_md, snakemake.output.by_output_tex,
            caption="Test-set MAE of each output (t = 0 excluded; in the output's own unit), mean over seeds; "
                    "euler_floor as in the accuracy table. Tabulated on: " + describe_machine() + ".")
print(by.to_string())
