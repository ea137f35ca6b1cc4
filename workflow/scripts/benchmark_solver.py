"""Rule benchmark_solver: forward-Euler throughput of every solver backend over speed.solver_n_cells."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import numba  # noqa: E402

from benchmarks.solver_throughput import run  # noqa: E402
from core.io import write_text  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

numba.set_num_threads(min(snakemake.threads, numba.config.NUMBA_NUM_THREADS))
df = run(study)
write_text(snakemake.output.csv, df.to_csv(index=False))
