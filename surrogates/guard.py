"""Finished work is never lost to an accidental edit of its inputs.

Snakemake reruns a job whose input changed, and deletes the job's outputs before the job starts. A dataset
edited or damaged by accident (a truncated file, an edited sidecar) would make it delete trained models before
the rerun job refuses the file. :func:`check_finished_inputs` runs when the workflow is parsed, before anything
is scheduled: every dataset that a finished training job (all its outputs present) read must still be the
file it was, checksums, finite values and provenance; else the whole run stops, naming the file and what it
protects. A missing dataset is not an accident (it is regenerated, and the models that read it train again).
Nothing here imports torch (the workflow calls it while it parses).
"""
from __future__ import annotations

from pathlib import Path

from core.errors import InvalidInputError
from core.io import load_dataset, sidecar_path
from core.layout import Layout

from .datasets import expected_provenance
from .study import Study

OUTPUTS = ("metrics", "model", "losses")  # rules train and train_cohort


def finished_jobs(study: Study) -> list[tuple]:
    """The training jobs of the grid whose outputs are all there: ``(problem, kind, n, arch, seed)``."""
    lay = Layout(study.results_dir)
    return [job for job in study.training_grid() if all(lay.run_file(k, *job).exists() for k in OUTPUTS)]


def check_finished_inputs(study: Study) -> int:
    """Refuse (``InvalidInputError``, one line) when a dataset read by a finished training job of ``study`` is
    there but no longer the file it was. Returns how many dataset files were checked."""
    lay = Layout(study.results_dir)
    users: dict[Path, list] = {}
    for job in finished_jobs(study):
        p, _, n, _, _ = job
        for path, part, size in ((lay.split(p, n, "train"), "train", n), (lay.split(p, n, "val"), "val", n),
                                 (lay.test(p), "test", None)):
            users.setdefault((path, part, size, p), []).append(job)
    checked = 0
    for (path, part, size, p), jobs in users.items():
        if not path.exists() and not sidecar_path(path).exists():
            continue  # deleted on purpose: the dataset rule makes it again, and these models train again
        checked += 1
        try:
            problem = study.problem(p)
            load_dataset(path, expect=expected_provenance(problem, study, part, size))
        except InvalidInputError as exc:
            model = lay.run_file("model", *jobs[0])
            raise InvalidInputError(
                f"{exc}. It is an input of {len(jobs)} finished model(s) (e.g. {model}), which Snakemake would "
                "delete to retrain them: nothing was run. Restore the file, or delete it (and its sidecar) to "
                "regenerate it and train them again") from None
    return checked
