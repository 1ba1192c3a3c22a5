"""inspect_model and model_fingerprint."""

import json

import torch
from moe_tiny import E, K, tiny_model

from bh_routing.models import inspect_model, model_fingerprint


def test_model_info(family):
    model = tiny_model(family, backend="batched_mm")
    info = inspect_model(model)
    assert info.family == family and info.num_experts == E and info.top_k == K
    assert info.experts_implementation == "batched_mm"
    assert info.num_layers == 3 and info.num_moe_layers == len(info.moe_layer_indices)
    total = sum(p.numel() for p in model.parameters())
    assert info.total_params == total
    assert info.active_params == total - info.expert_params + round(info.expert_params * K / E)
    assert info.active_params < info.total_params
    assert json.loads(json.dumps(info.to_dict()))["family"] == family
    text = str(info)
    assert f"{info.num_moe_layers} of 3 decoder layers" in text and f"top-{K}" in text


def test_fingerprint_ignores_dtype_but_sees_weights():
    model = tiny_model("olmoe")
    fp = model_fingerprint(model)
    assert fp.startswith("sha256:") and len(fp) == 7 + 64
    assert model_fingerprint(tiny_model("olmoe")) == fp  # same seed, same weights
    assert model_fingerprint(model.to(torch.bfloat16)) == fp
    with torch.no_grad():
        model.model.layers[0].mlp.gate.weight[0, 0] += 1.0
    assert model_fingerprint(model) != fp
