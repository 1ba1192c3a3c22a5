"""Fixtures of the model-layer tests (helpers live in moe_tiny.py)."""

import pytest
import torch

pytest.importorskip("transformers")

from moe_tiny import BACKENDS, FAMILIES  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared: keep torch to one thread in these tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param
