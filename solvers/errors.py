"""The project's own exceptions: one hierarchy, messages that say what was wrong and how to fix it."""


class PipelineError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidInputError(PipelineError, ValueError):
    """An argument, a configuration value or an input file is not acceptable."""


class BackendUnavailableError(PipelineError, RuntimeError):
    """A backend was asked for explicitly but its library or hardware is missing."""


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
