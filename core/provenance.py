"""What an artefact was made for, recorded when it is written and checked before it is used.

Datasets, checkpoints and metrics files carry a ``provenance`` mapping (problem, the fingerprint of the
problem's definition, surrogate kind, n, seed, architecture, ...). A consumer states what it needs and
:func:`check_provenance` refuses, naming the file and the first key that differs, before any work is done.
"""
from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from .errors import ProvenanceError

_MISSING = object()


def check_provenance(recorded: Mapping, expected: Mapping, what: str) -> None:
    """Raise :class:`ProvenanceError` when a key of ``expected`` is absent from ``recorded`` or differs.

    ``what`` names the artefact (``"dataset results/datasets/C/test.npz"``). Values are compared as JSON
    would (tuples equal lists, ints equal floats of the same value).
    """
    for key, want in expected.items():
        got = recorded.get(key, _MISSING) if isinstance(recorded, Mapping) else _MISSING
        if got is _MISSING:
            raise ProvenanceError(
                f"{what} does not record its {key!r}, so it cannot be checked that it was made for {key} = "
                f"{_show(want)}; it was written by an older version: delete it and regenerate it")
        if _norm(got) != _norm(want):
            raise ProvenanceError(
                f"{what} was made for {key} = {_show(got)}, but it is used for {key} = {_show(want)}; "
                "it does not belong here: regenerate it (or point to the right file)")


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _norm(x) for k, x in v.items()}
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def _show(v) -> str:
    text = repr(_norm(v)) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


@lru_cache(maxsize=1)
def project_version() -> str:
    """``git describe`` of the project checkout, else the installed package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=root,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib import metadata

    try:
        return metadata.version("ephys-surrogates")
    except metadata.PackageNotFoundError:
        return "unknown"
