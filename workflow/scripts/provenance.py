"""Rule provenance: machine, versions and configuration of this run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
from core.io import write_json  # noqa: E402
from core.machine import machine_info  # noqa: E402
from core.provenance import project_version  # noqa: E402

write_json(snakemake.output[0], {"machine": machine_info(), "project_version": project_version(),
                                 "config": dict(snakemake.params.config)})
