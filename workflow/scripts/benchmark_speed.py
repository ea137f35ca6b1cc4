"""Rule benchmark_speed: the paper's N at K kept states, then the K sweep at the first N."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks import speedup  # noqa: E402
from benchmarks.inference import REGISTRY  # noqa: E402
from surrogates.io import atomic_write  # noqa: E402

torch.set_num_threads(snakemake.threads)
sp = snakemake.params.speed
device = snakemake.params.device
if device == "auto":  # resolved here, on the node that runs the timings (a GPU node on a cluster)
    device = "cuda" if torch.cuda.is_available() else "cpu"
backends = [b for b in sp["backends"] if device == "cuda" or REGISTRY[b].device == "cpu"]
models = dict(snakemake.input.items())
cfg, workdir = dict(snakemake.config), Path(snakemake.output.raw).parent / "speed_work"
frames = [speedup.run(models, backends, sp["precisions"], sp["n_cells"], [sp["n_outputs"]], sp["t_end"], sp["repeats"],
                      cfg, sp["problem"], workdir=workdir)]
if sp["k_sweep"]:
    frames.append(speedup.run(models, backends, sp["precisions"], sp["n_cells"][:1], sp["k_sweep"], sp["t_end"],
                              sp["repeats"], cfg, sp["problem"], workdir=workdir))
df = pd.concat(frames, ignore_index=True)
atomic_write(Path(snakemake.output.raw), lambda fh: fh.write(df.to_csv(index=False).encode()))
