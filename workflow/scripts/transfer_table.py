"""Rule transfer_table: every ITNN rolled out over the other trajectory problems it covers, one row per network."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
from benchmarks.tables import transfer_table, write_table  # noqa: E402
from core.machine import describe_machine  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

df = transfer_table(snakemake.input.metrics, study)
write_table(df, snakemake.output.csv, snakemake.output.md, snakemake.output.tex,
            caption="ITNNs rolled out over the held-out test trajectories of other problems they cover (their own "
                    "test_from problem is in the accuracy table): each seed's network, the mean over seeds (std: "
                    "mae_std, max_std) and the ensemble (the mean of the networks), beside the test set's Euler floor. "
                    f"Tabulated on: {describe_machine()}.")
print(df.to_string())
