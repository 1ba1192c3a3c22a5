"""``model_fingerprint``: identifies a model's routing exactly, for calibration files."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .adapters import get_adapter


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the first MoE router's weight: its shape and its values rounded to bfloat16.

    Rounding to bfloat16 makes the fingerprint the same whether the model is loaded in float32
    or bfloat16 (a calibration made on CPU in float32 fits the same model on a GPU in bf16);
    any other change of the router weights changes it.

    Returns
    -------
    str
        ``"sha256:<64 hex digits>"``.
    """
    adapter = get_adapter(model)
    router = adapter.find_layers(model)[0].router
    return router_weight_fingerprint(adapter.family, router.weight)


def router_weight_fingerprint(family: str, weight: torch.Tensor) -> str:
    """The fingerprint of :func:`model_fingerprint` from a family name and the first router's
    weight (E, H): also usable where the model is not a transformers model (vLLM)."""
    weight = weight.detach()
    h = hashlib.sha256()
    h.update(f"{family}:{tuple(weight.shape)}".encode())
    h.update(weight.to(device="cpu", dtype=torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return "sha256:" + h.hexdigest()
