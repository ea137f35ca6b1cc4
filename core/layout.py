"""Where every output lives below ``results_dir``: the one definition of the run layout.

The workflow's rules, the programs and the tests all ask this module for paths; nothing else spells
them out. Passing Snakemake wildcards (``"{problem}"``) gives the rules' patterns::

    layout = Layout("results")
    layout.model_dir("C", "ddnn", 1000, "mlp3x64", 0)   # results/models/C/ddnn/n1000/mlp3x64/seed0
    layout.model_dir("{problem}", "{surrogate}", "{n}", "{arch}", "{seed}")   # a rule's pattern

``results_dir`` is resolved to a real absolute path first (:func:`resolve_results_dir`), so two
spellings of one folder are one folder for everything keyed on it (locks, Snakemake's records).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# the files of one trained model's folder
RUN_FILES = {
    "metrics": "metrics.json",        # test errors, provenance, timings (training.train)
    "model": "best_model.pth",        # best-validation weights with the architecture and provenance
    "losses": "losses.csv",           # the training log
    "stats": "model_stats.txt",       # per-layer weight and gradient norms
    "resume": "checkpoint.pth",       # resume point of an unfinished run (removed when it finishes)
    "onnx": "model.onnx",             # ONNX export (dynamic batch)
    "onnx_check": "onnx_check.json",  # onnxruntime vs torch on the validation inputs
}


def resolve_results_dir(path) -> Path:
    """The real absolute path of ``path`` (symlinks and ``..`` resolved, created folders or not)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


@dataclass(frozen=True)
class Layout:
    """Paths of a run below ``root`` (a resolved results_dir)."""

    root: Path

    def __init__(self, results_dir):
        object.__setattr__(self, "root", resolve_results_dir(results_dir))

    # ------------------------------------------------------------ datasets
    def dataset_dir(self, problem) -> Path:
        return self.root / "datasets" / str(problem)

    def split(self, problem, n, part: str) -> Path:
        """Training (``part="train"``) or validation (``"val"``) set of size ``n``."""
        if part not in ("train", "val"):
            raise ValueError(f"part must be 'train' or 'val', got {part!r}")
        return self.dataset_dir(problem) / f"n{n}" / f"{part}.npz"

    def test(self, problem) -> Path:
        return self.dataset_dir(problem) / "test.npz"

    @staticmethod
    def sidecar(dataset: Path) -> Path:
        return Path(dataset).with_suffix(".json")

    # ------------------------------------------------------------ trained models
    def model_dir(self, problem, surrogate, n, arch, seed) -> Path:
        return self.root / "models" / str(problem) / str(surrogate) / f"n{n}" / str(arch) / f"seed{seed}"

    def run_file(self, kind: str, problem, surrogate, n, arch, seed) -> Path:
        """A file of a model's folder by kind (a key of ``RUN_FILES``)."""
        return self.model_dir(problem, surrogate, n, arch, seed) / RUN_FILES[kind]

    def ensemble_file(self, problem, surrogate, n, arch) -> Path:
        """The metrics of the mean of the seeds' networks (``surrogates.ensemble``), beside the seeds' folders."""
        return self.model_dir(problem, surrogate, n, arch, 0).parent / "ensemble" / RUN_FILES["metrics"]

    def transfer_file(self, problem, surrogate, n, arch, target) -> Path:
        """The metrics of an ITNN's seeds rolled out over another problem's test set (``surrogates.transfer``)."""
        return self.model_dir(problem, surrogate, n, arch, 0).parent / f"on_{target}" / RUN_FILES["metrics"]

    def models_glob(self, kind: str = "metrics") -> list[Path]:
        """Every existing file of this kind below ``models/`` (sorted)."""
        return sorted((self.root / "models").glob(f"*/*/n*/*/seed*/{RUN_FILES[kind]}"))

    # ------------------------------------------------------------ everything else
    def table(self, name: str, ext: str) -> Path:
        return self.root / "tables" / f"{name}.{ext}"

    def figure(self, name: str, ext: str) -> Path:
        return self.root / "figures" / f"{name}.{ext}"

    def benchmark(self, name: str) -> Path:
        return self.root / "benchmarks" / name

    @property
    def job_records(self) -> Path:
        """The folder of Snakemake's ``benchmark:`` records, one file per job (``benchmarks.runlog`` reads them)."""
        return self.root / "benchmarks" / "jobs"

    def job_record(self, rule: str, name: str) -> Path:
        """Snakemake's ``benchmark:`` record of one job of ``rule`` (its seconds, peak memory, CPU seconds)."""
        return self.job_records / rule / f"{name}.tsv"

    def log(self, *parts: str) -> Path:
        return self.root.joinpath("logs", *parts)

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def lock(self) -> Path:
        return self.root / ".run.lock"
