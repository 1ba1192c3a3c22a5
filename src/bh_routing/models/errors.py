"""Errors of the model layer, and the transformers range it is tested against (one constant)."""

from __future__ import annotations

from ..core.errors import BHRoutingError

#: The transformers versions the model layer is tested with; the same bound as in pyproject.toml.
SUPPORTED_TRANSFORMERS = ">=5.0,<5.25"


class UnsupportedModelError(BHRoutingError, ValueError):
    """The model is not a supported MoE family, or its layout is not the one an adapter knows."""


class ModelLoadError(BHRoutingError, ValueError):
    """A model could not be loaded; the message is one line saying why."""


def installed_transformers() -> str:
    """The installed transformers version, or "not installed"."""
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # noqa: BLE001 - any metadata failure means we cannot tell
        return "not installed"


def version_note() -> str:
    """``"installed transformers 5.24.0; bh-routing supports transformers>=5.0,<5.25"``."""
    installed = installed_transformers()
    return f"installed transformers {installed}; bh-routing supports transformers{SUPPORTED_TRANSFORMERS}"
