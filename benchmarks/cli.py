"""What every benchmark program shares: a ``--config`` option and the machine beside every row."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the module's docstring and ``--config`` (files merged over config/config.yaml)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, nargs="*", default=[],
                    help="config files merged over config/config.yaml (e.g. config/quick.yaml)")
    return ap


def table_with_machine(rows: list, info: dict) -> pd.DataFrame:
    """The rows as a table, with the machine and library versions in every row."""
    df = pd.DataFrame(rows)
    for k, v in info.items():
        df[k] = v
    return df
