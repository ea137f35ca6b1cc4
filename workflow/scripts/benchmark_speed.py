"""Rule benchmark_speed: the paper's N at K kept states and the K sweep at the first N (config `speed`).
A backend that fails is recorded as a failed row; the job fails at the end (after writing every row)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import torch  # noqa: E402

from benchmarks import speedup  # noqa: E402
from core.io import write_text  # noqa: E402
from surrogates.scoring import expected_model  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

torch.set_num_threads(snakemake.threads)
sp = study.speed
# resolved here, on the node that runs the timings (a GPU node on a cluster); cuda where none is seen is refused
device = speedup.resolve_device(snakemake.params.device)
backends = speedup.backends_for(sp.backends, device)
kinds = sp.surrogates
models = {kind: snakemake.input[kind] for kind in kinds}
ensembles = {name[len("ensemble_"):]: list(files) for name, files in snakemake.input.items()
             if name.startswith("ensemble_") and not name.endswith("_score")}
expect = {}
for kind in models:  # the workflow knows exactly which model it asked for: check all of it
    p = study.speed_problem_of(kind)
    expect[kind] = expected_model(study, p, kind, max(study.problem(p).sizes), study.seeds[0],
                                  study.training(p).architecture)
df = speedup.run(study, models, backends, sp.precisions, workdir=Path(snakemake.output.raw).parent / "speed_work",
                 expect=expect, ensembles=ensembles)
write_text(snakemake.output.raw, df.to_csv(index=False))
failed = df[df["failed"].notna()]
if len(failed):
    print(failed[["backend", "precision", "surrogate", "failed"]].drop_duplicates().to_string(index=False))
    sys.exit(f"{len(failed)} speed row(s) failed (reasons above); every other row is in {snakemake.output.raw}")
