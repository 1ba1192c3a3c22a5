"""Fixtures of the model-layer tests (helpers live in moe_tiny.py)."""

import pytest

pytest.importorskip("transformers")

from moe_tiny import BACKENDS, FAMILIES  # noqa: E402


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param
