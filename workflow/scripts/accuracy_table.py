"""Rule accuracy_table."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.tables import accuracy_table, write_table  # noqa: E402

df = accuracy_table(snakemake.input.metrics, snakemake.input.floors)
info = machine_info()
device = info.get("gpu") or f"{info['cpu']} ({info['cores']} cores)"
write_table(df, snakemake.output.csv, snakemake.output.md, snakemake.output.tex,
            caption=f"Test-set accuracy (t = 0 excluded), mean over seeds; euler_floor: Euler dt=0.01 labels vs "
                    f"solve_ivp. Trained on: {device}.")
print(df.to_string())
