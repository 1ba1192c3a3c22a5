"""The device policy (models/device.py): dtype, experts backend and batch size from a GPU's
compute capability and memory, decided without a GPU (the capability is passed in)."""

from __future__ import annotations

import pytest
import torch

from bh_routing.models import ModelLoadError
from bh_routing.models.device import GPUS, MAX_BATCH, DevicePolicy, NonFiniteError, check_finite, decide, grouped_mm_native

GiB = 2**30


@pytest.mark.parametrize("capability, dtype, backend", [
    ((7, 0), "float16", "eager"),  # V100: no bfloat16, no native grouped_mm
    ((7, 5), "float16", "eager"),  # T4
    ((8, 0), "bfloat16", "grouped_mm"),  # A100
    ((9, 0), "bfloat16", "grouped_mm"),  # H100
])
def test_policy_by_compute_capability(capability, dtype, backend):
    p = decide(capability, torch_version="2.10.0")
    assert (p.dtype, p.experts_backend) == (dtype, backend)


def test_a_t4_says_why_in_one_line():
    t4 = GPUS["t4"]
    p = decide(t4.capability, gpu=t4.name, total_bytes=t4.total_bytes, torch_version="2.10.0",
               available_bytes=GiB, per_sequence_bytes=GiB // 5)
    assert p.batch_size == 5
    assert p.line() == (
        "device cuda:0 (Tesla T4, compute capability 7.5, 14.7 GiB): float16, experts eager, batch 5 "
        "(no bfloat16 below compute capability 8.0; grouped_mm not native for float16 at compute capability 7.5; "
        "batch from 1.00 GiB free for the working set)"
    )


def test_grouped_mm_native_needs_hopper_before_torch_2_9():
    if hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has torch.nn.functional.grouped_mm: Ampere and newer whatever the version string")
    assert not grouped_mm_native((8, 0), "bfloat16", torch_version="2.8.0")
    assert grouped_mm_native((9, 0), "bfloat16", torch_version="2.8.0")
    assert grouped_mm_native((8, 0), "bfloat16", torch_version="2.9.1+cu126")


def test_float16_never_takes_grouped_mm_and_the_cpu_gets_float32():
    assert decide((9, 0), dtype="float16").experts_backend == "eager"
    cpu = decide(None, device="cpu")
    assert (cpu.dtype, cpu.batch_size) == ("float32", None)


def test_flags_override_the_policy():
    p = decide((7, 5), dtype="float32", experts_backend="grouped_mm", batch_size=3)
    assert (p.dtype, p.experts_backend, p.batch_size) == ("float32", "grouped_mm", 3)
    assert decide((9, 0), experts_backend="auto").experts_backend == "grouped_mm"


def test_batch_from_memory_is_bounded():
    assert decide((9, 0), available_bytes=100 * GiB, per_sequence_bytes=GiB).batch_size == MAX_BATCH
    assert decide((7, 5), available_bytes=-GiB, per_sequence_bytes=GiB).batch_size == 1
    assert decide((7, 5)).batch_size is None  # nothing known: no cap


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "fp8"}, "dtype must be one of float32, bfloat16, float16, got 'fp8'"),
    ({"experts_backend": "fast"}, "experts backend must be one of auto, eager, grouped_mm, batched_mm, got 'fast'"),
    ({"batch_size": 0}, "batch size must be an int >= 1, got 0"),
])
def test_bad_choices_are_one_line_errors(kwargs, message):
    with pytest.raises(ModelLoadError) as err:
        decide((7, 5), **kwargs)
    assert str(err.value) == message


def test_policy_is_json_able():
    d = decide((8, 9), gpu="NVIDIA L4").to_dict()
    assert DevicePolicy(**d) == decide((8, 9), gpu="NVIDIA L4")


def test_inf_in_hidden_states_stops_with_a_clear_message(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.arange(2, 12)[None]
    check_finite(model, ids)  # a sound model passes
    with torch.no_grad():
        model.model.layers[1].mlp.experts.down_proj.fill_(float("inf"))
    with pytest.raises(NonFiniteError) as err:
        check_finite(model, ids)
    assert str(err.value).startswith("the hidden states after layer 1 hold inf/NaN in float32; the run stops")


def test_after_loading_the_batch_comes_from_the_free_memory(tiny_model_dir, monkeypatch):
    """apply_policy (load_model's last step on CUDA), with the GPU's free memory mocked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bh_routing.models.memory import apply_policy, batch_cap, batch_for

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    per_seq, first = batch_for(model.config, 64)
    from bh_routing.models.memory import SLACK_BYTES

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (SLACK_BYTES + first + 2 * per_seq, 16 * GiB))
    lines = []
    t4 = decide((7, 5), gpu="Tesla T4", total_bytes=15102 * 2**20)
    p = apply_policy(model, tok, t4, seq_len=64, log=lines.append)
    assert p.batch_size == batch_cap(model) == 3
    assert lines == [p.line()] and lines[0].startswith("device cuda:0 (Tesla T4, compute capability 7.5, 14.7 GiB): "
                                                         "float16, experts eager, batch 3 (no bfloat16 below")
