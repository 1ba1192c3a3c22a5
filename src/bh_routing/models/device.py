"""The device policy: dtype, experts backend and batch size of a run, decided in one place.

From the GPU's compute capability and memory (:func:`decide`):

* dtype - bfloat16 from compute capability 8.0 (Ampere: A100, L4, H100 ...), float16 below (a T4,
  7.5, has no bfloat16 tensor cores; a V100, 7.0, neither), float32 on the CPU. float16 can
  overflow: :func:`check_finite` stops a run with one line when the hidden states hold inf/NaN.
* experts backend - ``grouped_mm`` only where it runs natively (transformers'
  ``_can_use_grouped_mm``: compute capability 8.0+ with torch >= 2.9, 9.x before; bfloat16),
  else ``eager`` (on a T4 transformers would fall back to a Python loop over experts anyway).
* batch size - the most sequences whose working set (:mod:`bh_routing.models.memory`) fits the
  memory left after the weights, at most :data:`MAX_BATCH` (the largest batch any step uses).

``--dtype`` and ``--experts-backend`` override the first two; :meth:`DevicePolicy.line` is the line
a run prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..core.errors import BHRoutingError
from .errors import ModelLoadError

MAX_BATCH = 16  # the largest batch any analysis step uses
EXPERTS_BACKENDS = ("auto", "eager", "grouped_mm", "batched_mm")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class GpuSpec:
    """A GPU as torch reports it: ``total_memory`` of ``torch.cuda.get_device_properties``."""

    name: str
    capability: tuple[int, int]
    total_bytes: int


MiB = 2**20
#: The GPUs of ``bh-routing plan --gpu``: nominal totals as torch reports them for the common
#: models (T4 16 GB: 15,102 MiB; L4 24 GB: 22,478 MiB; A100 40 GB: 40,442 MiB; H100 80 GB: 81,079 MiB,
#: the last measured in benchmarks/gpu-check/gpu.json, the others the cards' published figures).
GPUS = {
    "t4": GpuSpec("Tesla T4", (7, 5), 15102 * MiB),
    "l4": GpuSpec("NVIDIA L4", (8, 9), 22478 * MiB),
    "a100": GpuSpec("NVIDIA A100-SXM4-40GB", (8, 0), 40442 * MiB),
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 81079 * MiB),
}


@dataclass(frozen=True)
class DevicePolicy:
    device: str  # "cpu", "cuda:0", ...
    gpu: str | None  # the GPU's name
    capability: tuple[int, int] | None
    total_bytes: int | None
    dtype: str  # "float32" | "bfloat16" | "float16"
    experts_backend: str  # "eager" | "grouped_mm" | ...
    batch_size: int | None  # sequences per forward pass; None: the steps' own batches (no cap)
    why: tuple[str, ...] = ()  # the reasons, one phrase each

    def line(self) -> str:
        """``device cuda:0 (Tesla T4, compute capability 7.5, 14.7 GiB): float16, experts eager, batch 4 (...)``."""
        where = self.device
        if self.gpu is not None:
            cc = "" if self.capability is None else f", compute capability {self.capability[0]}.{self.capability[1]}"
            mem = "" if self.total_bytes is None else f", {self.total_bytes / 2**30:.1f} GiB"
            where += f" ({self.gpu}{cc}{mem})"
        batch = "" if self.batch_size is None else f", batch {self.batch_size}"
        why = f" ({'; '.join(self.why)})" if self.why else ""
        return f"device {where}: {self.dtype}, experts {self.experts_backend}{batch}{why}"

    def to_dict(self) -> dict:
        return asdict(self)


def grouped_mm_native(capability: tuple[int, int] | None, dtype: str, torch_version: str | None = None) -> bool:
    """Whether transformers' ``grouped_mm`` experts run the native kernel (not a loop) here."""
    if capability is None or dtype != "bfloat16":
        return False
    version = tuple(int(p) for p in (torch_version or torch.__version__).split("+")[0].split(".")[:2])
    if hasattr(torch.nn.functional, "grouped_mm") or version >= (2, 9):
        return tuple(capability) >= (8, 0)
    return capability[0] == 9


def _check_choice(value, choices, what) -> None:
    if value not in choices:
        raise ModelLoadError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


def decide(
    capability: tuple[int, int] | None,
    *,
    device: str = "cuda:0",
    gpu: str | None = None,
    total_bytes: int | None = None,
    available_bytes: int | None = None,
    per_sequence_bytes: int | None = None,
    dtype: str | None = None,
    experts_backend: str | None = None,
    batch_size: int | None = None,
    torch_version: str | None = None,
) -> DevicePolicy:
    """The policy for a device of ``capability`` (None: the CPU or another non-CUDA device).

    ``available_bytes``: memory left for the working set (after weights, context and slack);
    ``per_sequence_bytes``: the working set one sequence adds; both known: the batch size.
    ``dtype``/``experts_backend``/``batch_size``: the user's choices, which win ("auto" = decide).
    """
    why = []
    if dtype is not None:
        _check_choice(dtype, DTYPE_NAMES, "dtype")
        why.append("dtype as asked")
    elif capability is None:
        dtype = "float32"
    elif tuple(capability) >= (8, 0):
        dtype = "bfloat16"
    else:
        dtype = "float16"
        why.append("no bfloat16 below compute capability 8.0")
    if experts_backend not in (None, "auto"):
        _check_choice(experts_backend, EXPERTS_BACKENDS, "experts backend")
        why.append("experts backend as asked")
    elif capability is None:
        experts_backend = "grouped_mm"  # transformers' default; it picks its own CPU path
    elif grouped_mm_native(capability, dtype, torch_version):
        experts_backend = "grouped_mm"
    else:
        experts_backend = "eager"
        why.append(f"grouped_mm not native for {dtype} at compute capability {capability[0]}.{capability[1]}")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ModelLoadError(f"batch size must be an int >= 1, got {batch_size!r}")
        why.append("batch as asked")
    elif available_bytes is not None and per_sequence_bytes:
        batch_size = max(1, min(MAX_BATCH, int(available_bytes // per_sequence_bytes)))
        if batch_size < MAX_BATCH:
            why.append(f"batch from {max(available_bytes, 0) / 2**30:.2f} GiB free for the working set")
    return DevicePolicy(device, gpu, None if capability is None else tuple(capability), total_bytes, dtype,
                        experts_backend, batch_size, tuple(why))


def cuda_facts(device: str) -> tuple[str, tuple[int, int], int]:
    """(name, compute capability, total bytes) of a CUDA ``device``."""
    props = torch.cuda.get_device_properties(torch.device(device))
    return props.name, (props.major, props.minor), props.total_memory


class NonFiniteError(BHRoutingError, ArithmeticError):
    """The model's hidden states or loss hold inf/NaN (float16 overflow, most often)."""


def non_finite_message(dtype, where: str) -> str:
    name = str(dtype).replace("torch.", "")
    hint = ("float16 overflowed: use --dtype float32, or bfloat16 on a GPU of compute capability 8.0 or newer"
            if name == "float16" else "the model's weights or inputs are broken")
    return f"{where} hold inf/NaN in {name}; the run stops rather than report them ({hint})"


@torch.no_grad()
def check_finite(model, input_ids: torch.Tensor) -> None:
    """One forward pass of ``input_ids``: raise NonFiniteError naming the first layer whose hidden states hold inf/NaN."""
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device), output_hidden_states=True, use_cache=False)
    for i, h in enumerate(out.hidden_states):
        if not bool(torch.isfinite(h).all()):
            where = "the embeddings" if i == 0 else f"the hidden states after layer {i - 1}"
            raise NonFiniteError(non_finite_message(h.dtype, where))
    if not bool(torch.isfinite(out.logits).all()):
        raise NonFiniteError(non_finite_message(out.logits.dtype, "the logits"))

