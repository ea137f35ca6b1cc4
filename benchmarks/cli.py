"""What every benchmark program shares: a ``--config`` option, command-line options checked as the workflow
checks the configuration, errors as one line (:mod:`core.cli`) and the machine beside every row."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from core.cli import Parser, integer, number, run_main  # noqa: F401  (the programs use them through this module)
from core.errors import InvalidInputError
from surrogates.study import Study


def parser(doc: str) -> Parser:
    """An argument parser with the module's docstring and ``--config`` (files merged over config/config.yaml)."""
    ap = Parser(description=doc)
    ap.add_argument("--config", type=Path, nargs="*", default=[],
                    help="config files merged over config/config.yaml (e.g. config/quick.yaml)")
    return ap


def narrow(study: Study, given: Mapping[str, tuple[str, object]]) -> Study:
    """``study`` with each command-line option's value (``{"--backends": ("speed.backends", [...])}``; ``None``:
    not given) put at its configuration key, then validated exactly as the workflow validates its
    configuration (:func:`surrogates.config.validate_config`), before any work. An error names the option."""
    from surrogates.config import validate_config

    out = study.as_dict()
    for key, value in given.values():
        if value is None:
            continue
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    try:
        return validate_config(out)
    except InvalidInputError as exc:
        msg = str(exc)
        for option, (key, value) in given.items():
            head = f"config key {key}"
            if value is not None and msg.startswith(head) and msg[len(head):len(head) + 1] in (".", ":"):
                raise InvalidInputError(f"argument {option}: {msg[len('config key '):]}") from None
        raise


def table_with_machine(rows: list, info: dict) -> pd.DataFrame:
    """The rows as a table, with the machine and library versions in every row."""
    df = pd.DataFrame(rows)
    for k, v in info.items():
        df[k] = v
    return df


def git_commit() -> str:
    """The short commit of the checkout this runs from (``unknown`` outside a git checkout)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
