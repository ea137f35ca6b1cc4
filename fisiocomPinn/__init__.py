"""Compatibility layer: the Pinn-Torch import paths of the seed README, as thin adapters over ``surrogates``.

    from fisiocomPinn.Net import FullyConnectedNetworkMod
    from fisiocomPinn.Trainer import Trainer
    from fisiocomPinn.Loss import MSE
    from fisiocomPinn.Loss_PINN import LOSS_PINN
"""
