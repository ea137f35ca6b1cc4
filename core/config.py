"""Reading a configuration and checking it against the schema shipped in this package.

``core/config.schema.yaml`` states the types, the allowed values and the defaults of every key. This
module reads YAML, validates it against that schema (naming the key of the first error, e.g.
``config key datasets.sizes.0: -5 is less than the minimum of 1``) and fills in the defaults. The checks
that need the models and problems (ranges, names, time grids) live with them, in ``surrogates.config``.
"""
from __future__ import annotations

import copy
import math
import os
from importlib import resources
from pathlib import Path
from typing import Mapping

import yaml

from .errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


def schema() -> dict:
    """The configuration schema (JSON Schema draft 2020-12), read from the package."""
    return yaml.safe_load(resources.files("core").joinpath("config.schema.yaml").read_text())


def key_name(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def read_yaml(path) -> dict:
    """A YAML mapping from ``path``; unreadable files or non-mappings raise ``InvalidInputError``."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(cfg, dict):
        raise InvalidInputError(f"config {path} must be a mapping of keys to values")
    return cfg


def merge(base: Mapping, extra: Mapping) -> dict:
    """``extra`` merged into a copy of ``base``, mappings key by key (as Snakemake merges --configfile)."""
    out = copy.deepcopy(dict(base))
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_config(*paths) -> dict:
    """The default configuration (``config/config.yaml``) with each file of ``paths`` merged over it in turn.

    A preset such as ``config/quick.yaml`` holds only what differs from the default, as with Snakemake's
    ``--configfile``. A path that is itself the default file is not merged twice.
    """
    cfg = read_yaml(DEFAULT_CONFIG)
    for p in paths:
        if p is None or Path(p).resolve() == DEFAULT_CONFIG.resolve():
            continue
        cfg = merge(cfg, read_yaml(p))
    return cfg


# the checkout's own folders: a results_dir there (or the checkout itself) would write among its sources
SOURCE_FOLDERS = (".git", ".snakemake", ".venv", "benchmarks", "config", "core", "fisiocomPinn", "inference",
                  "profiles", "solvers", "surrogates", "tests", "training", "workflow", "docs")


def check_finite(obj, path=()) -> None:
    """Refuse any NaN or infinite number anywhere in a configuration (YAML's ``.nan``, ``.inf``), naming its
    dotted key: a schema's bounds never see a NaN (every comparison with it is false)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            check_finite(v, (*path, k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, (*path, i))
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise InvalidInputError(f"config key {key_name(path)}: {obj} is not a finite number")


def check_results_dir(value) -> None:
    """Refuse a ``results_dir`` that is the checkout itself or lies in one of its source folders."""
    where = Path(os.path.realpath(os.path.expanduser(str(value))))
    root = Path(os.path.realpath(ROOT))
    if where == root or any(where == root / f or root / f in where.parents for f in SOURCE_FOLDERS):
        raise InvalidInputError(
            f"config key results_dir: {value!r} is {where}, the checkout {root} itself or one of its source "
            "folders; the workflow would write among the project's files: choose a folder of its own "
            "(e.g. results or results/NAME)")


def apply_drops(cfg: Mapping) -> dict:
    """A copy of ``cfg`` without what a preset dropped: presets are merged key by key, so a preset removes a
    problem by setting it to ``null`` (``problems: {A: null}``) and a surrogate kind by ``null`` or an empty list
    (``training: {surrogates: {itnn: []}}``). A dropped problem leaves every list and override that names it
    (``training.surrogates``, ``training.overrides``); a kind that trains on nothing any more leaves
    ``training.surrogates`` and the speed benchmark's ``surrogates`` and ``ensembles``. A ``null`` override is
    dropped too. Names that were never there are left for the checks to refuse."""
    out = copy.deepcopy(dict(cfg))
    problems = out.get("problems")
    if not isinstance(problems, dict):
        return out
    dropped = {p for p, spec in problems.items() if spec is None}
    out["problems"] = {p: spec for p, spec in problems.items() if spec is not None}
    training = out.get("training")
    if not isinstance(training, dict):
        return out
    gone = set()
    if isinstance(training.get("surrogates"), dict):
        kept = {}
        for kind, names in training["surrogates"].items():
            names = [p for p in names if p not in dropped] if isinstance(names, list) else names
            if names is None or names == []:
                gone.add(kind)
            else:
                kept[kind] = names
        training["surrogates"] = kept
    if isinstance(training.get("overrides"), dict):
        training["overrides"] = {p: o for p, o in training["overrides"].items() if o is not None and p not in dropped}
    speed = out.get("speed")
    if gone and isinstance(speed, dict):
        for key in ("surrogates", "ensembles"):
            if isinstance(speed.get(key), list):
                speed[key] = [k for k in speed[key] if k not in gone]
    return out


def validate_schema(cfg: Mapping) -> dict:
    """Check ``cfg`` (every number for being finite, where ``results_dir`` lies, then, what presets dropped
    removed first, :func:`apply_drops`, against the schema); returns a copy with the schema's defaults filled in."""
    import jsonschema

    check_finite(cfg)
    if isinstance(cfg, Mapping) and isinstance(cfg.get("results_dir"), str) and cfg["results_dir"]:
        check_results_dir(cfg["results_dir"])
    cfg = apply_drops(cfg)
    s = schema()
    errors = sorted(jsonschema.Draft202012Validator(s).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise InvalidInputError(f"config key {key_name(e.absolute_path)}: {e.message}")
    return _with_defaults(copy.deepcopy(dict(cfg)), s, s)


def _with_defaults(obj, node, root):
    """Fill the schema's ``default`` values into ``obj`` (recursively, for fixed properties)."""
    while "$ref" in node:  # a local JSON pointer such as "#/$defs/train_keys/device"
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    if isinstance(obj, dict):
        out = dict(obj)
        for k, sub in node.get("properties", {}).items():
            if k not in out and "default" in sub:
                out[k] = copy.deepcopy(sub["default"])
            if k in out:
                out[k] = _with_defaults(out[k], sub, root)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for k in out:
                if k not in node.get("properties", {}):
                    out[k] = _with_defaults(out[k], extra, root)
        return out
    return obj
