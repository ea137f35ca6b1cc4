"""``LOSS_PINN(pinn_func, batch_generator, batch_size, name)``: :class:`surrogates.losses.ResidualLoss`."""
from surrogates.losses import ResidualLoss as LOSS_PINN

__all__ = ["LOSS_PINN"]
