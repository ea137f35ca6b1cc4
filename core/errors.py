"""The project's own exceptions: one hierarchy, messages that say what was wrong and how to fix it."""
from __future__ import annotations

import errno


class PipelineError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidInputError(PipelineError, ValueError):
    """An argument, a configuration value or an input file is not acceptable."""


class ProvenanceError(InvalidInputError):
    """An artefact (dataset, checkpoint, metrics file) was made for something else than what it is used for.

    The message names the file and the recorded value that differs from the expected one.
    """


class BackendUnavailableError(PipelineError, RuntimeError):
    """A backend was asked for explicitly but its library or hardware is missing."""


class WriteError(PipelineError, OSError):
    """A file could not be written (disk full, permissions, ...); nothing partial was left behind."""

    def __init__(self, path, exc: OSError):
        self.path, self.errno_code = path, exc.errno
        why = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        hint = " (free some space or point results_dir elsewhere)" if exc.errno == errno.ENOSPC else ""
        super().__init__(exc.errno, f"cannot write {path}: {why}{hint}; nothing was left half-written")

    def __str__(self) -> str:
        return self.args[1]


class NonFiniteStateError(PipelineError, FloatingPointError):
    """A simulated state became NaN or infinite.

    Attributes name where: ``variable``, ``cell`` (index) and ``time``.
    """

    def __init__(self, model: str, variable: str, cell: int, time: float, value: float):
        self.model, self.variable, self.cell, self.time, self.value = model, variable, cell, time, value
        super().__init__(
            f"model {model!r}: state {variable!r} of cell {cell} became {value} at t = {time:g}; "
            "reduce dt or check the initial state and parameters of that cell"
        )
