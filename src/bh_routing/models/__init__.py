"""Model layer: variable-k routing inside transformers MoE models.

``patched(model, strategy, mode)`` routes every MoE layer with a strategy (``"patch"``) or records
the strategy's choice beside the model's own routing (``"analyze"``), yielding a
:class:`Recorder`. One small adapter per MoE family (:func:`get_adapter`) knows where the router
and experts modules are and the family's routing conventions. ``load_model`` and
``inspect_model`` load and describe a model.
"""

from .adapters import MoEAdapter, MoELayer, available_families, get_adapter, register_adapter
from .errors import SUPPORTED_TRANSFORMERS, ModelLoadError, UnsupportedModelError
from .fingerprint import model_fingerprint
from .inspection import ModelInfo, inspect_model
from .loading import check_device, load_model
from .patching import MODES, patched
from .recorder import Recorder

__all__ = [
    "MODES",
    "SUPPORTED_TRANSFORMERS",
    "ModelInfo",
    "ModelLoadError",
    "MoEAdapter",
    "MoELayer",
    "Recorder",
    "UnsupportedModelError",
    "available_families",
    "get_adapter",
    "inspect_model",
    "check_device",
    "load_model",
    "model_fingerprint",
    "patched",
    "register_adapter",
]
