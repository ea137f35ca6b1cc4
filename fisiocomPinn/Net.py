"""``FullyConnectedNetworkMod``: the seed README's name for :class:`surrogates.network.MLP`."""
from surrogates.network import MLP


class FullyConnectedNetworkMod(MLP):
    """``FullyConnectedNetworkMod(input_shape, output_shape, hidden_config)``; see :class:`MLP`."""

    def __init__(self, input_shape, output_shape, hidden_config, output_activation=None, **scaling):
        super().__init__(input_shape, output_shape, hidden_config, output_activation, **scaling)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Also accepts a ``best_model.pth`` written by the Trainer (weights with their architecture)."""
        if isinstance(state_dict, dict) and "state_dict" in state_dict and "config" in state_dict:
            state_dict = state_dict["state_dict"]
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
