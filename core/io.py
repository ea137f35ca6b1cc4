"""Files that other tools read: written atomically and deterministically, read with verification.

Every file of the project is written through :func:`atomic_write`: to a temporary name beside the
target, flushed and fsync'd, then renamed into place, so an interrupted run never leaves a file that
looks complete. An OS error on the way (disk full, permissions) becomes a :class:`~core.errors.WriteError`
naming the path, and the temporary file is removed.

A dataset is an ``.npz`` (``X``, ``Y``, ``input_names``, ``output_names`` and optional extra arrays) with a
JSON sidecar of the same stem holding its provenance, the sha256 of ``X`` and ``Y``, and a sha256 of the
sidecar's own fields (``sidecar_sha256``), so an edited sidecar is refused like a changed array. The zip
entries carry a fixed timestamp: the same arrays give the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .errors import InvalidInputError, WriteError
from .provenance import check_provenance

REQUIRED_KEYS = ("X", "Y", "input_names", "output_names")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable) -> Path:
    """Call ``write(fh)`` on a binary temporary file beside ``path``, then rename it into place.

    Raises :class:`~core.errors.WriteError` (naming ``path``) when the OS refuses (disk full, ...).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise WriteError(path, exc) from exc
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(tmp) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode())


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write` left in ``folder`` (not below it) when its
    process was killed mid-write (SIGKILL cannot be caught). Call it only while holding the folder (its
    :class:`~core.lock.FolderLock`): a temporary of a live writer would go too. Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            _remove(str(tmp))
            removed.append(tmp)
    return removed


def import_generated(source: str, path, module_name: str):
    """Store generated Python ``source`` at ``path`` (atomically, unless the file already holds it) and import
    it as ``module_name`` (registered in ``sys.modules``). For generated kernels: Numba's cache and Triton's
    JIT read a function's source from its file, so the text must live in one."""
    import importlib.util
    import sys

    path = Path(path)
    if not path.exists() or path.read_text() != source:
        write_text(path, source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def json_default(o):
    """``json.dumps`` fallback for NumPy scalars and arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def read_json(path, what: str = "file") -> dict:
    """Read a JSON file; a missing or damaged one raises ``InvalidInputError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"{what} {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{what} {path} is damaged ({exc})") from exc


def write_npz(path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` (readable by ``np.load``), atomically and byte-reproducibly."""

    def write(fh):
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), buf.getvalue())

    return atomic_write(path, write)


# ---------------------------------------------------------------- checksums
def sha256_array(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def sha256_json(obj) -> str:
    """sha256 of the canonical JSON text of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of named arrays (each by :func:`sha256_array`, in key order): a checkpoint's weights."""
    return sha256_json({str(k): sha256_array(np.asarray(arrays[k])) for k in sorted(arrays)})


# ---------------------------------------------------------------- records (metrics.json and the like)
CONTENT_KEY = "content_sha256"


def record_checksum(obj: Mapping) -> str:
    """The checksum of a record's content: every field but :data:`CONTENT_KEY`, as canonical JSON."""
    return sha256_json({k: v for k, v in obj.items() if k != CONTENT_KEY})


def write_record(path, obj: Mapping) -> dict:
    """Write a record (a ``metrics.json``) as :func:`write_json` does, with the checksum of its content in
    :data:`CONTENT_KEY`, so that :func:`read_record` refuses it once a number in it was changed. Returns the
    record as written (and as a reader will see it)."""
    body = json.loads(json.dumps(dict(obj), default=json_default))
    body.pop(CONTENT_KEY, None)
    body[CONTENT_KEY] = record_checksum(body)
    write_json(path, body)
    return body


def read_record(path, what: str = "metrics file", expect: Mapping | None = None) -> dict:
    """Read a record written by :func:`write_record`. Raises ``InvalidInputError`` naming the file when it
    is missing, damaged, carries no checksum (written by an older version or by hand) or was changed after
    it was written; ``expect`` is checked against its ``provenance`` (:func:`check_provenance`)."""
    path = Path(path)
    rec = read_json(path, what)
    if not isinstance(rec, dict):
        raise InvalidInputError(f"{what} {path} is damaged (not a JSON mapping)")
    if CONTENT_KEY not in rec:
        raise InvalidInputError(
            f"{what} {path} records no {CONTENT_KEY}, so its numbers cannot be checked: written by hand, or by "
            "an older version (then `python -m surrogates.adopt RESULTS_DIR` adds it); else delete it and regenerate it")
    if rec[CONTENT_KEY] != record_checksum(rec):
        raise InvalidInputError(
            f"{what} {path} was changed after it was written (its content no longer matches its {CONTENT_KEY}): "
            "delete it and regenerate it")
    if expect:
        check_provenance(rec.get("provenance", {}), expect, f"{what} {path}")
    return rec


# ---------------------------------------------------------------- datasets
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
    side = json.loads(json.dumps(dict(meta), default=json_default))
    side.update({
        "file": Path(path).name,
        "rows": int(X.shape[0]),
        "input_names": [str(s) for s in data["input_names"]],
        "output_names": [str(s) for s in data["output_names"]],
        "sha256": {"X": sha256_array(X), "Y": sha256_array(Y)},
    })
    side["sidecar_sha256"] = sha256_json(side)
    write_npz(path, data)
    write_json(sidecar_path(path), side)
    return side


def read_sidecar(path, verify: bool = True) -> dict:
    """The sidecar of dataset ``path`` (its ``.json``); with ``verify``, its own checksum is checked."""
    side_path = sidecar_path(path)
    meta = read_json(side_path, "sidecar")
    if verify:
        body = {k: v for k, v in meta.items() if k != "sidecar_sha256"}
        if meta.get("sidecar_sha256") != sha256_json(body):
            raise InvalidInputError(
                f"sidecar {side_path} was changed after it was written (its fields no longer match its "
                "sidecar_sha256): delete the dataset and its sidecar and regenerate them")
    return meta


def load_dataset(path, verify: bool = True, expect: Mapping | None = None) -> tuple[dict, dict]:
    """Read a dataset and its sidecar.

    With ``verify``, the sha256 of ``X`` and ``Y`` and the sidecar's own checksum are checked. ``expect``
    maps provenance keys (``problem``, ``problem_fingerprint``, ``part``, ``n``, ...) to the values the caller
    needs; a recorded value that differs raises :class:`~core.errors.ProvenanceError` naming the file and key.
    Raises ``InvalidInputError`` naming the file when it is missing, damaged, lacks a key, or no longer
    matches its sidecar.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"dataset {path} does not exist")
    if not sidecar_path(path).exists():
        raise InvalidInputError(f"dataset {path} has no sidecar {sidecar_path(path).name}: it was not written completely")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # BadZipFile, ValueError, EOFError, OSError ...
        raise InvalidInputError(f"dataset {path} is damaged and cannot be read ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise InvalidInputError(f"dataset {path} lacks {missing}")
    meta = read_sidecar(path, verify)
    if verify:
        for key in ("X", "Y"):
            if sha256_array(data[key]) != meta.get("sha256", {}).get(key):
                raise InvalidInputError(
                    f"dataset {path}: sha256 of {key} does not match its sidecar {sidecar_path(path).name}; the file "
                    "was changed or damaged after it was written: delete it and regenerate it")
    for key in ("X", "Y"):  # checked on every read, not only when written: NaN never flows into training or scores
        a = data[key]
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise InvalidInputError(
                f"dataset {path}: {key} holds NaN or infinite values (first at row {int(bad[0])}); delete it and "
                "regenerate it")
    if expect:
        check_provenance(meta.get("provenance", {}), expect, f"dataset {path}")
    return data, meta
