import numpy as np
import pytest

from solvers.backends import available_backends


def _gpu_reason():
    return available_backends()["cuda"]


@pytest.fixture(autouse=True)
def _skip_gpu(request):
    """Tests marked ``gpu`` skip, with the reason, where the CUDA backend cannot run."""
    if request.node.get_closest_marker("gpu"):
        reason = _gpu_reason()
        if reason is not None:
            pytest.skip(f"needs a GPU: {reason}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
