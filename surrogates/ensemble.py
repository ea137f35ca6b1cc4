"""The mean of several trained networks (the seeds of one configuration) as a surrogate of its own.

    python -m surrogates.ensemble --problem C --surrogate ddnn --n 100000 --arch mlp3x64 \\
        --model results/models/C/ddnn/n100000/mlp3x64/seed0/best_model.pth --model ...seed1/... \\
        --test results/datasets/C/test.npz --out results/models/C/ddnn/n100000/mlp3x64/ensemble/metrics.json

Each member is checked to be the run it stands for (problem, definition fingerprint, kind, n, architecture,
its seed) before anything is scored; the members' seeds must differ. The ensemble answers the mean of its
members' outputs; for an ITNN that is the mean increment at every step of the rollout (one surrogate, rolled
out like any ITNN). It is scored on the problem's held-out test set exactly as a single network is
(:func:`surrogates.scoring.evaluate`), and its ``metrics.json`` names it ``<kind>_ensemble``, so the accuracy
table gives it a row of its own beside the seeds' mean.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from core.errors import InvalidInputError, PipelineError, ProvenanceError
from core.io import load_dataset, read_record, write_record
from core.provenance import check_provenance, project_version

from .config import load_config
from .datasets import expected_provenance
from .network import MLP, load_checkpoint
from .study import Study

SUFFIX = "_ensemble"


class Ensemble(nn.Module):
    """``forward(x)`` = the mean of ``members``' outputs (networks of the same inputs and outputs)."""

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise InvalidInputError(f"an ensemble needs at least 2 networks, got {len(members)}")
        shapes = {(m.n_inputs, m.n_outputs) for m in members}
        if len(shapes) != 1:
            raise InvalidInputError(f"the ensemble's networks differ in inputs/outputs: {sorted(shapes)}")
        self.members = nn.ModuleList(members)
        self.n_inputs, self.n_outputs = shapes.pop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for m in self.members[1:]:
            out = out + m(x)
        return out / len(self.members)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def label(surrogate: str) -> str:
    """The accuracy table's name of an ensemble of ``surrogate`` networks."""
    return surrogate + SUFFIX


def expected_ensemble(study: Study, problem: str, surrogate: str, n: int, arch: str, seeds) -> dict:
    """The provenance an ensemble's metrics must carry: its members' (less the seed) and their seeds."""
    from .scoring import expected_model

    prov = {k: v for k, v in expected_model(study, problem, surrogate, n, 0, arch).items() if k != "seed"}
    return {**prov, "ensemble_of": sorted(int(s) for s in seeds)}


def load_members(study: Study, problem: str, surrogate: str, n: int, arch: str, checkpoints) -> tuple[list[MLP], list[int]]:
    """Load each checkpoint, checked against the run it must be (its own recorded seed), on the CPU."""
    from .scoring import expected_model

    members, seeds = [], []
    for path in checkpoints:
        model, meta = load_checkpoint(path)
        prov = meta.get("provenance", {})
        if not isinstance(prov.get("seed"), int):
            raise ProvenanceError(f"checkpoint {path} records no seed; it cannot be a member of an ensemble")
        check_provenance(prov, expected_model(study, problem, surrogate, n, prov["seed"], arch), f"checkpoint {path}")
        members.append(model.eval())
        seeds.append(prov["seed"])
    if len(set(seeds)) != len(seeds):
        raise InvalidInputError(f"the ensemble's checkpoints repeat a seed ({sorted(seeds)}): {list(map(str, checkpoints))}")
    return members, seeds


def _members_training(checkpoints) -> float | None:
    """What the ensemble cost to train: the sum of its members' training seconds (their metrics.json, beside
    each checkpoint), or None where one is missing."""
    total = 0.0
    for c in checkpoints:
        f = Path(c).parent / "metrics.json"
        if not f.exists():
            return None
        total += float(read_record(f, "metrics file").get("train_seconds") or 0.0)
    return total


def score_ensemble(study: Study, problem: str, surrogate: str, n: int, arch: str, checkpoints, test_path, out_path) -> dict:
    """Score the mean of ``checkpoints`` on the held-out test set and write its ``metrics.json`` (atomically)."""
    from .scoring import evaluate

    p = study.problem(problem)
    members, seeds = load_members(study, problem, surrogate, n, arch, checkpoints)
    test, test_meta = load_dataset(test_path, expect=expected_provenance(p, study, "test"))
    model = Ensemble(members)
    problems = study.rollout_sources(p)
    t0 = time.perf_counter()
    metrics, extras = evaluate(model, p, test, problems)
    prov = expected_ensemble(study, problem, surrogate, n, arch, seeds)
    result = {
        "provenance": prov, "problem": p.name, "surrogate": label(surrogate), "n_train": int(n), "seed": -1,
        "members": sorted(seeds), "arch": arch, "hidden": prov["hidden"], "test": metrics, "mae": metrics["mae"],
        "max_abs_err": metrics["max_abs_err"], "rel_l2": metrics["rel_l2"], "n_params": model.n_params,
        "train_seconds": _members_training(checkpoints), "score_seconds": time.perf_counter() - t0, "device": "cpu",
        "torch": torch.__version__, "euler_floor": test_meta.get("euler_floor"),
        "test_set": {"problem": test_meta.get("provenance", {}).get("problem"), "sha256": test_meta.get("sha256")},
        "version": project_version(), **extras,
    }
    return write_record(out_path, result)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, nargs="*", default=[],
                    help="config files merged over config/config.yaml (as training.train)")
    ap.add_argument("--problem", required=True)
    ap.add_argument("--surrogate", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--model", action="append", required=True, type=Path, help="a member's best_model.pth (repeat)")
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        r = score_ensemble(load_config(*a.config), a.problem, a.surrogate, a.n, a.arch, a.model, a.test, a.out)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{r['surrogate']} of seeds {r['members']}: test MAE {r['mae']:.3e}, max {r['max_abs_err']:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
