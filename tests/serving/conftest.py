"""Fixtures shared by the serving tests."""

import pytest
import torch

from bh_routing.models import load_model


@pytest.fixture(scope="module")
def hf():
    """The embedded model and its tokenizer in float32 on the CPU: the transformers reference the
    vLLM engine (also float32 here) is compared with."""
    return load_model(None, device="cpu", dtype=torch.float32)
