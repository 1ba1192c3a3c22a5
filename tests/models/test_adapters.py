"""The adapter registry and the layout checks of each family."""

import sys
from pathlib import Path

import pytest
import torch
import transformers
from moe_tiny import E, K, tiny_model, tokens

from bh_routing import TopK
from bh_routing.models import (
    SUPPORTED_TRANSFORMERS,
    UnsupportedModelError,
    available_families,
    get_adapter,
    patched,
)

MOE_LAYERS = {  # decoder index of each MoE layer in the tiny models
    "olmoe": [0, 1, 2],
    "mixtral": [0, 1, 2],
    "qwen2_moe": [0, 2],  # mlp_only_layers=[1]
    "qwen3_moe": [0, 1, 2],
    "deepseek_v3": [1, 2],  # first_k_dense_replace=1
    "gpt_oss": [0, 1, 2],
}


def test_layers_found_and_dense_layers_skipped(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    layers = adapter.find_layers(model)
    assert [layer.decoder_index for layer in layers] == MOE_LAYERS[family]
    assert [layer.ordinal for layer in layers] == list(range(len(layers)))
    assert all(layer.name.endswith(("mlp.gate", "mlp.router")) for layer in layers)
    assert adapter.num_experts(model.config) == E and adapter.top_k(model.config) == K


def test_get_adapter_by_model_config_or_name():
    model = tiny_model("olmoe")
    assert get_adapter(model).family == get_adapter(model.config).family == get_adapter("olmoe").family == "olmoe"
    assert available_families() == ["deepseek_v3", "gpt_oss", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe"]


def test_unknown_family_suggests_close_names():
    with pytest.raises(UnsupportedModelError, match=r"model type 'olmo' is not a supported MoE family; did you mean 'olmoe'\? \(available: deepseek_v3, gpt_oss, mixtral, olmoe, qwen2_moe, qwen3_moe\)"):
        get_adapter("olmo")


def test_non_moe_model_lists_the_supported_families():
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4, vocab_size=64
    )
    model = transformers.LlamaForCausalLM(cfg)
    with pytest.raises(UnsupportedModelError, match=r"model type 'llama' is not a supported MoE family \(available: deepseek_v3, .*olmoe"):
        with patched(model, TopK(2)):
            pass
    with pytest.raises(UnsupportedModelError, match="cannot tell the model family of Linear"):
        get_adapter(torch.nn.Linear(2, 2))


def test_unexpected_layout_names_the_versions():
    model = tiny_model("olmoe")
    model.model.layers[1].mlp.gate = torch.nn.Linear(32, E, bias=False)
    version = transformers.__version__
    msg = (
        rf"olmoe layout not recognised: expected OlmoeTopKRouter at model.layers.1.mlp.gate, found Linear; "
        rf"installed transformers {version}; bh-routing supports transformers>=5.0,<5.25"
    )
    with pytest.raises(UnsupportedModelError, match=msg):
        with patched(model, TopK(K)):
            pass
    # nothing was patched: layer 0 was fine but the whole model is resolved first
    assert "forward" not in model.model.layers[0].mlp.gate.__dict__


def test_dense_layer_where_an_moe_layer_is_expected():
    model = tiny_model("qwen2_moe")
    model.config.mlp_only_layers = []  # now layer 1 should be MoE, but it is a dense MLP
    with pytest.raises(UnsupportedModelError, match=r"expected Qwen2MoeTopKRouter at model.layers.1.mlp.gate, found nothing"):
        get_adapter(model).find_layers(model)


def test_router_returning_another_format():
    model = tiny_model("mixtral")
    router = model.model.layers[0].mlp.gate
    original = router.forward
    router.forward = lambda h: original(h)[:2]  # a future layout: two outputs
    with pytest.raises(UnsupportedModelError, match=r"model.layers.0.mlp.gate returned \[\(18, 8\), \(18, 2\)\], expected \(logits"):
        with torch.no_grad(), patched(model, TopK(K)):
            model(tokens())
    del router.forward


def test_supported_range_is_the_pyproject_bound():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    deps = [d.replace(" ", "") for d in pyproject["project"]["dependencies"]]
    assert f"transformers{SUPPORTED_TRANSFORMERS}" in deps


def test_deepseek_warns_when_its_selection_is_not_reproduced():
    model = tiny_model("deepseek_v3", topk_group=1)  # group limit: best 1 of 2 groups
    for layer in get_adapter(model).find_layers(model):
        layer.router.topk_group = 1
    with pytest.warns(UserWarning, match="group limit \\(top 1 of 2 expert groups\\) is not applied"):
        with patched(model, TopK(K)):
            pass
    model = tiny_model("deepseek_v3")
    with torch.no_grad():
        get_adapter(model).find_layers(model)[0].router.e_score_correction_bias[3] = 0.5
    with pytest.warns(UserWarning, match="selection bias e_score_correction_bias is not applied"):
        with patched(model, TopK(K)):
            pass


def test_router_logits_for_hidden_states(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    layer = adapter.find_layers(model)[0]
    hidden = torch.randn(2, 5, 32)
    with torch.no_grad():
        logits = adapter.router_logits(layer, hidden)
        direct = torch.nn.functional.linear(hidden.reshape(-1, 32).to(layer.router.weight.dtype), layer.router.weight)
        if getattr(layer.router, "bias", None) is not None:
            direct = direct + layer.router.bias
    assert logits.shape == (10, E)
    torch.testing.assert_close(logits, direct)
