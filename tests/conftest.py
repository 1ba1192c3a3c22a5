"""Suite-wide settings."""

import os

import torch

# `make test` runs two pytest-xdist workers on two cores: one torch thread each, or the workers'
# thread pools oversubscribe the cores and every forward pass slows down many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
