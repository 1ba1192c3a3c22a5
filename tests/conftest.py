"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread in every test.

    The models here are tiny, so intra-op parallelism buys nothing; and `make test` runs two
    pytest-xdist workers on two cores, where each worker's thread pool would oversubscribe the
    cores and slow every forward pass many times over.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
