"""Registry of MoE-family adapters, chosen by ``config.model_type``."""

from __future__ import annotations

import difflib

from ..errors import UnsupportedModelError
from .base import MoEAdapter, MoELayer, text_config
from .deepseek_v3 import DeepseekV3Adapter
from .gpt_oss import GptOssAdapter
from .mixtral import MixtralAdapter
from .olmoe import OlmoeAdapter
from .qwen2_moe import Qwen2MoeAdapter
from .qwen3_moe import Qwen3MoeAdapter

_REGISTRY: dict[str, type[MoEAdapter]] = {}


def register_adapter(cls: type[MoEAdapter]) -> type[MoEAdapter]:
    """Add an adapter class under each of its ``model_types`` (usable as a decorator)."""
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


for _cls in (OlmoeAdapter, MixtralAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter, DeepseekV3Adapter, GptOssAdapter):
    register_adapter(_cls)


def available_families() -> list[str]:
    """The supported ``config.model_type`` values, sorted."""
    return sorted(_REGISTRY)


def get_adapter(model_or_type) -> MoEAdapter:
    """The adapter for a model, a config, or a ``model_type`` string.

    Raises
    ------
    UnsupportedModelError
        For a model type that is not a supported MoE family, with close names and the list.
    """
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        model_type = getattr(text_config(model_or_type), "model_type", None)
        if not isinstance(model_type, str):
            raise UnsupportedModelError(
                f"cannot tell the model family of {type(model_or_type).__name__} (no config.model_type); "
                f"supported MoE families: {', '.join(available_families())}"
            )
    cls = _REGISTRY.get(model_type)
    if cls is None:
        close = difflib.get_close_matches(model_type, available_families(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnsupportedModelError(
            f"model type {model_type!r} is not a supported MoE family{hint} "
            f"(available: {', '.join(available_families())})"
        )
    return cls()


__all__ = ["MoEAdapter", "MoELayer", "available_families", "get_adapter", "register_adapter"]
