"""What every command-line program shares: errors as one line naming what was wrong, never a traceback.

:class:`Parser` is ``argparse.ArgumentParser`` whose errors are one line (``PROG: error: argument --n: ...``)
instead of the usage block; :func:`run_main` runs a program's body and turns the project's errors and the
OS's (a full disk, a read-only folder) into one line on stderr and exit status 2 (130 on Ctrl-C).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import PipelineError, WriteError


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the argument (and exit status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def one_line(text) -> str:
    return "; ".join(s.strip() for s in str(text).splitlines() if s.strip())


def describe(exc: BaseException) -> str:
    """One line for an error: the project's own message, or the OS's with the file it names."""
    if isinstance(exc, (PipelineError, WriteError)):
        return one_line(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return one_line(f"cannot access{where}: {exc.strerror or exc}")
    return one_line(f"{type(exc).__name__}: {exc}")


def run_main(body: Callable[[], int | None]) -> int:
    """``body()``'s exit status; a project error or an OS error becomes ``error: ...`` (one line) and 2."""
    try:
        return int(body() or 0)
    except (PipelineError, OSError) as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def integer(minimum: int = 1):
    """An argparse type: an integer of at least ``minimum`` (argparse names the option in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            try:  # 1e6 is a whole number too
                f = float(text)
                if not f.is_integer():
                    raise ValueError
                value = int(f)
            except (ValueError, OverflowError):
                raise argparse.ArgumentTypeError(f"takes an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def number(minimum: float = 0.0):
    """An argparse type: a finite number greater than ``minimum``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a number, got {text!r}") from None
        if not (value == value and abs(value) != float("inf")) or value <= minimum:
            raise argparse.ArgumentTypeError(f"must be a finite number above {minimum:g}, got {text}")
        return value
    return parse
