"""Files that other tools read: written atomically and deterministically, read with verification.

A dataset is an ``.npz`` (``X``, ``Y``, ``input_names``, ``output_names`` and optional extra arrays) with
a JSON sidecar of the same stem holding its provenance and the sha256 of ``X`` and ``Y``. Files are
written to a temporary name and renamed, so an interrupted run never leaves a file that looks complete.
The zip entries carry a fixed timestamp: the same arrays give the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from solvers.errors import InvalidInputError

REQUIRED_KEYS = ("X", "Y", "input_names", "output_names")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def sha256_array(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_npz(path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` (readable by ``np.load``), atomically and byte-reproducibly."""

    def write(fh):
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), buf.getvalue())

    atomic_write(Path(path), write)


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode()
    atomic_write(Path(path), lambda fh: fh.write(data))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def save_dataset(path, data: Mapping[str, np.ndarray], meta: Mapping) -> dict:
    """Write ``data`` to ``path`` (.npz) and its sidecar (.json) with checksums; returns the sidecar."""
    for k in REQUIRED_KEYS:
        if k not in data:
            raise InvalidInputError(f"dataset for {path} lacks {k!r}")
    X, Y = np.asarray(data["X"]), np.asarray(data["Y"])
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise InvalidInputError(f"refusing to write {path}: X or Y holds NaN or infinite values")
    side = dict(meta)
    side.update({
        "file": Path(path).name,
        "rows": int(X.shape[0]),
        "input_names": [str(s) for s in data["input_names"]],
        "output_names": [str(s) for s in data["output_names"]],
        "sha256": {"X": sha256_array(X), "Y": sha256_array(Y)},
    })
    write_npz(path, data)
    write_json(sidecar_path(path), side)
    return side


def load_dataset(path, verify: bool = True) -> tuple[dict, dict]:
    """Read a dataset and its sidecar; with ``verify``, check the sha256 of ``X`` and ``Y``.

    Raises ``InvalidInputError`` naming the file when it is missing, damaged, lacks a key, or no
    longer matches its sidecar.
    """
    path = Path(path)
    side_path = sidecar_path(path)
    if not path.exists():
        raise InvalidInputError(f"dataset {path} does not exist")
    if not side_path.exists():
        raise InvalidInputError(f"dataset {path} has no sidecar {side_path.name}: it was not written completely")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # BadZipFile, ValueError, EOFError, OSError ...
        raise InvalidInputError(f"dataset {path} is damaged and cannot be read ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise InvalidInputError(f"dataset {path} lacks {missing}")
    try:
        meta = json.loads(side_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"sidecar {side_path} is damaged ({exc})") from exc
    if verify:
        for key in ("X", "Y"):
            if sha256_array(data[key]) != meta.get("sha256", {}).get(key):
                raise InvalidInputError(
                    f"dataset {path}: sha256 of {key} does not match its sidecar {side_path.name}; the file was "
                    "changed or damaged after it was written: delete it and regenerate it"
                )
    return data, meta


def project_version() -> str:
    """``git describe`` of the project checkout, else the package version."""
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
