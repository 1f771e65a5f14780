import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def gaussian():
    """A 2-D Gaussian N(mu, s^2 I): one-mode mixture, an exact denoiser."""
    from disback.data import GaussianMixture

    return GaussianMixture(torch.tensor([[0.5, -1.0]]), torch.tensor([1.0]), 0.7)
