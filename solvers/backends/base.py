"""The solver-backend interface: one abstract hook, ``integrate``."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..model import CellModel


class Backend(ABC):
    """A forward-Euler integrator for many independent cells.

    Subclasses set ``name`` and ``options`` (the keyword options they accept), may say why they cannot
    run (``unavailable_reason``), and fill in ``integrate``.
    """

    name: str = ""
    options: tuple[str, ...] = ()

    def unavailable_reason(self) -> str | None:
        """``None`` when the backend can run here, else what is missing."""
        return None

    @abstractmethod
    def integrate(
        self,
        model: CellModel,
        y0: np.ndarray,
        P: np.ndarray,
        dt: float,
        n_saves: int,
        save_every: int,
        dtype: str,
        **options,
    ) -> tuple[np.ndarray, int | None]:
        """Integrate ``n_saves * save_every`` Euler steps.

        ``y0``: (n_cells, n_states), C-contiguous, in ``dtype``; ``P``: (n_params, n_cells) in ``dtype``, rows in
        ``model.param_names`` order. Returns ``Y`` of shape (n_saves + 1, n_cells, n_states) with ``Y[0] = y0``,
        and the index of the first saved row holding a non-finite value (``None`` if all are finite).
        """
