"""Data losses under the seed README's names: ``MSE(data_in=..., target=..., batch_size=...)`` etc."""
from surrogates.losses import DataLoss


def _named(metric: str, label: str):
    def make(data_in, target, batch_size=None, seed=0, name=label):
        return DataLoss(data_in, target, batch_size=batch_size, metric=metric, seed=seed, name=name)

    make.__name__ = make.__qualname__ = label
    make.__doc__ = f"{label} data loss; see surrogates.losses.DataLoss."
    return make


MSE = _named("mse", "MSE")
MAE = _named("mae", "MAE")
RMSE = _named("rmse", "RMSE")
RelL2 = _named("rel_l2", "RelL2")
