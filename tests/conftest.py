import pytest
import torch

# The nets in tests are tiny: one thread is as fast as two, and far faster on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Run the test body single-threaded (like the subprocesses of the kill tests), so results compare bitwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gaussian():
    """A 2-D Gaussian N(mu, s^2 I): one-mode mixture, an exact denoiser."""
    from disback.data import GaussianMixture

    return GaussianMixture(torch.tensor([[0.5, -1.0]]), torch.tensor([1.0]), 0.7)
