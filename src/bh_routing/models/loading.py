"""``load_model``: a supported MoE model and its tokenizer, from the hub, a folder, or embedded.

Every failure is a one-line :class:`ModelLoadError`: a missing local folder, a hub id that cannot
be reached offline, not enough memory, a model that is not a supported MoE family, the embedded
model not built yet.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError

from .adapters import get_adapter
from .errors import ModelLoadError, UnsupportedModelError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tokenizer_config.json")
DEVICE_HELP = "cpu, cuda, cuda:N or mps"


def check_device(device: str | None) -> str | None:
    """``device`` parses as a torch device and is available here (None: choose automatically).

    Raises ModelLoadError, e.g. ``device must be cpu, cuda, cuda:N or mps, got 'tpu7'``.
    """
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"device must be {DEVICE_HELP}, got {device!r}") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ModelLoadError(f"device {device!r} asked for, but no CUDA device is available")
        if d.index is not None and d.index >= n:
            raise ModelLoadError(f"device {device!r} asked for, but there {'is' if n == 1 else 'are'} only {n} CUDA device(s)")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but MPS is not available")
    elif d.type != "cpu":
        raise ModelLoadError(f"device must be {DEVICE_HELP}, got {device!r}")
    return device


def _offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def _hub_unreachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host fails: one quick probe, so that an offline machine
    gets its answer at once instead of after huggingface_hub's retries (about 25 s)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return False
    except OSError:  # no DNS, refused, unreachable, timed out
        return True


def _embedded_dir() -> Path:
    try:
        embedded = importlib.import_module("bh_routing.embedded")
        folder = Path(embedded.EMBEDDED_MODEL_DIR)
    except (ImportError, AttributeError):
        raise ModelLoadError(
            "the embedded model is not available: bh_routing.embedded.EMBEDDED_MODEL_DIR is missing"
        ) from None
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"the embedded model is not built: {folder} has no config.json (scripts/train_embedded.py builds it); "
            "pass a hub id or a local folder instead"
        )
    return folder


def _looks_local(name: str) -> bool:
    """A path rather than a hub id ("org/name"): exists, or starts like a path, or has 2+ slashes."""
    return (
        Path(name).expanduser().exists()
        or name.startswith(("/", "./", "../", "~", "."))
        or name.count("/") > 1
        or "\\" in name
    )


def _resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ModelLoadError(f"dtype must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


def available_memory(device: str) -> int | None:
    """Bytes of memory free for weights on ``device`` (CPU: MemAvailable), or None if unknown."""
    if device == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _needed_bytes(folder: Path, config, dtype: torch.dtype) -> int | None:
    """Weight bytes in ``dtype``, from the checkpoint files' size and their dtype."""
    size = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if size == 0:
        return None
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    stored = _DTYPES.get(str(stored).replace("torch.", ""), torch.float32) if stored is not None else torch.float32
    return size * dtype.itemsize // stored.itemsize


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    experts_backend: str | None = None,
    batch_size: int | None = None,
    seq_len: int = 256,
):
    """Load a supported MoE causal LM and its tokenizer, ready for inference.

    Parameters
    ----------
    name_or_path : str or PathLike, optional
        A hub id (``"allenai/OLMoE-1B-7B-0924"``) or a local folder; None loads the embedded
        default model (``bh_routing.embedded.EMBEDDED_MODEL_DIR``).
    device : str, optional
        ``"cpu"``, ``"cuda"`` (``device_map="auto"``) or ``"cuda:N"``; default CUDA if available.
    dtype : torch.dtype or str, optional
        Default: the device policy (:mod:`bh_routing.models.device`): bfloat16 on CUDA from compute
        capability 8.0, float16 below, float32 on CPU.
    trust_remote_code : bool, default False
    experts_backend : str, optional
        transformers' experts implementation ("eager", "grouped_mm", ...); default ("auto"): the
        device policy's on CUDA, transformers' own elsewhere.
    batch_size : int, optional
        On CUDA, the most sequences per forward pass (default: from the free memory, for
        sequences of ``seq_len`` tokens); the policy is printed to stderr in one line.

    Returns
    -------
    (model, tokenizer)
        The model in ``eval()`` mode.

    Raises
    ------
    ModelLoadError
        With a one-line reason.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name_or_path is None:
        source = str(_embedded_dir())
    else:
        source = os.fspath(name_or_path)
        if _looks_local(source):
            folder = Path(source).expanduser()
            if not folder.is_dir():
                raise ModelLoadError(f"model folder not found: {folder}")
            if not (folder / "config.json").is_file():
                raise ModelLoadError(f"not a model folder (no config.json): {folder}")
            source = str(folder)
    device = check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = None
    if torch.device(device).type == "cuda":
        from .device import cuda_facts, decide

        gpu, capability, total = cuda_facts(device)
        asked = None if dtype is None else str(_resolve_dtype(dtype, device)).replace("torch.", "")
        policy = decide(capability, device=device, gpu=gpu, total_bytes=total, dtype=asked,
                        experts_backend=experts_backend, batch_size=batch_size)
        torch_dtype = getattr(torch, policy.dtype)
        _expandable_segments()
    else:
        torch_dtype = _resolve_dtype(dtype, device)
    local = Path(source).is_dir()
    offline = _offline() or (not local and _hub_unreachable())  # unreachable: the local cache only
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": offline and not local}
    backend = policy.experts_backend if policy is not None else (None if experts_backend in (None, "auto") else experts_backend)
    load_kwargs = {} if backend is None else {"experts_implementation": backend}

    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except OSError as exc:
        if not local and (offline or "connect" in str(exc).lower()):
            raise ModelLoadError(
                f"cannot load {source!r}: the Hugging Face Hub cannot be reached (offline or no network) and it is "
                "not in the local cache; download it where there is a network, or pass a local folder"
            ) from None
        raise ModelLoadError(f"cannot load {source!r}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # unknown model_type without remote code, ...
        raise ModelLoadError(f"cannot load {source!r}: {str(exc).splitlines()[0]}") from None
    try:
        get_adapter(config)
    except UnsupportedModelError as exc:
        raise ModelLoadError(f"{source} is not a supported MoE model: {exc}") from None
    if local and not any((Path(source) / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"no tokenizer in {source} (none of {', '.join(_TOKENIZER_FILES)}): save the tokenizer with the model"
        )

    if local:
        need, have = _needed_bytes(Path(source), config, torch_dtype), available_memory(device)
        if need is not None and have is not None and need > have:
            raise ModelLoadError(
                f"not enough memory to load {source} in {str(torch_dtype).replace('torch.', '')} on {device}: "
                f"needs about {_gib(need)}, {_gib(have)} available"
            )
    # one GPU: every weight on it, streamed there shard by shard (no CPU copy of the checkpoint; no
    # silent offload of layers to the CPU as "auto" would do on a card that is too small)
    single = device == "cuda" and torch.cuda.device_count() == 1
    device_map = {"": "cuda:0"} if single else "auto" if device == "cuda" else (None if device == "cpu" else {"": device})
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, device_map=device_map, **kwargs, **load_kwargs)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise ModelLoadError(f"not enough memory to load {source} on {device}: {str(exc).splitlines()[0]}") from None
    except RuntimeError as exc:
        text = str(exc).lower()
        if "out of memory" in text or "can't allocate memory" in text:
            raise ModelLoadError(f"not enough memory to load {source} on {device}: {str(exc).splitlines()[0]}") from None
        raise
    except (OSError, SafetensorError) as exc:  # missing, truncated or corrupt weight files
        raise ModelLoadError(f"cannot load the weights of {source!r}: {str(exc).splitlines()[0]}") from None
    model.eval()
    try:
        get_adapter(model).find_layers(model)
    except UnsupportedModelError as exc:
        raise ModelLoadError(f"{source}: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {source!r}: {str(exc).splitlines()[0]}") from None
    if len(tokenizer) < 2 or not tokenizer("The model", add_special_tokens=False)["input_ids"]:
        raise ModelLoadError(f"the tokenizer of {source!r} is empty: save the model's tokenizer with it")
    if policy is not None:
        from .memory import apply_policy

        apply_policy(model, tokenizer, policy, seq_len=seq_len)
    return model, tokenizer


def _expandable_segments() -> None:
    """PyTorch's expandable segments (little allocator slack), unless the user configured the allocator."""
    if any(os.environ.get(v) for v in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")):
        return
    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (AttributeError, RuntimeError):  # an older torch, or a platform without them
        pass
