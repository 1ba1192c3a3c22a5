"""The patch's short cuts are exact: the model's router output is TopK's choice bit for bit, the
Recorder's fast paths give the numbers of its general path, and the experts module trusts the
router's "no padding" only for the very tensor the router returned."""

import pytest
import torch
from moe_tiny import E, FAMILIES, H, K, tiny_model, tokens

from bh_routing import BH, TopK
from bh_routing.models import get_adapter, patched
from bh_routing.models.adapters.base import text_config
from bh_routing.models.experts import PairHandoff

SOFTMAX_TOPK = ("olmoe", "mixtral", "qwen2_moe", "qwen3_moe")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_model_router_output_is_topk_bit_for_bit(family, dtype):
    """Where the patch reuses the router's output for TopK(k), that output equals the strategy's."""
    model = tiny_model(family).to(dtype)
    adapter, config = get_adapter(model), text_config(model)
    assert adapter.routes_as_model(TopK(K), config) == (family in SOFTMAX_TOPK)
    if family not in SOFTMAX_TOPK:
        return
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(257, H, generator=g).to(dtype)  # (T, H)
    hidden[:3] = 0.0  # all logits equal: ties everywhere, broken by the same topk call
    hidden[3:6] = hidden[6:9]  # repeated rows
    for layer in adapter.find_layers(model):
        out = type(layer.router).forward(layer.router, hidden)
        result = adapter.route(TopK(K), out[0], layer, config)
        routed = adapter.router_output(out, result, adapter.weights(out[0], result, TopK(K), config))
        for mine, theirs in zip(routed, out):
            assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)


def test_routes_as_model_only_for_the_models_k_and_weights():
    model = tiny_model("olmoe")  # norm_topk_prob False
    adapter, config = get_adapter(model), text_config(model)
    assert adapter.routes_as_model(TopK(K), config)
    assert adapter.routes_as_model(TopK(K, weight_rule="softmax"), config)
    assert not adapter.routes_as_model(TopK(K, weight_rule="renormalize"), config)
    assert not adapter.routes_as_model(TopK(K + 1), config)
    assert not adapter.routes_as_model(BH(0.05, min_k=K, max_k=K), config)
    mixtral = tiny_model("mixtral")  # always renormalises
    assert not get_adapter(mixtral).routes_as_model(TopK(K, weight_rule="softmax"), text_config(mixtral))


@pytest.mark.parametrize("mode", ["patch", "analyze"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("strategy", [TopK(K), TopK(1), BH(0.3)], ids=["topk-model", "topk-1", "bh"])
def test_recorder_fast_paths_give_the_general_paths_numbers(mode, masked, strategy):
    """record_tokens=True takes the general path (every token kept); without it, the fast ones."""
    model, x = tiny_model("olmoe"), tokens(batch=3, length=7)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    kwargs = {"attention_mask": mask} if masked else {}
    summaries, outputs = [], []
    for record_tokens in (False, True):
        with torch.no_grad(), patched(model, strategy, mode, record_tokens=record_tokens) as rec:
            outputs.append(model(x, **kwargs).logits)
            outputs.append(model(x[:1, :4]).logits)  # a second call, without a mask
        summaries.append(rec.to_dict())
    assert summaries[0] == summaries[1]
    assert torch.equal(outputs[0], outputs[2]) and torch.equal(outputs[1], outputs[3])
    if mode == "analyze":  # the overlap from the token records, counted directly
        for layer in range(rec.num_layers):
            got = rec.tokens(layer)
            chosen = got["indices"].unsqueeze(2) == got["model_indices"].unsqueeze(1)  # (N, W, k)
            both = (chosen.any(dim=2).sum(dim=1) * got["valid"]).sum()
            pairs = (got["counts"] * got["valid"]).sum()
            assert rec.model_overlap()[layer].item() == pytest.approx(both.item() / pairs.item())


def test_handoff_vouches_only_for_the_tensor_it_was_given():
    a, b = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    h = PairHandoff()
    assert not h.take(a)
    h.give(a)
    assert not h.take(b)  # equal values, another tensor
    h.give(a)
    assert h.take(a) and not h.take(a)  # taken once, then forgotten


def test_experts_called_without_their_router_still_drop_the_sentinel(backend):
    """A direct call of a patched experts module with padded indices computes only the real pairs."""
    model = tiny_model("olmoe", backend=backend)
    layer = get_adapter(model).find_layers(model)[0]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, H, generator=g)  # (T, H)
    index = torch.tensor([[0, E], [1, 2], [E, E], [3, E], [4, 5]])  # (T, 2), sentinel E
    weight = torch.rand(5, 2, generator=g) * (index < E)  # (T, 2)
    with torch.no_grad():
        expected = torch.zeros(5, H)
        for t in range(5):
            for s in range(2):
                if index[t, s] < E:
                    expected[t] += layer.experts(hidden[t : t + 1], index[t : t + 1, s : s + 1], weight[t : t + 1, s : s + 1])[0]
        with patched(model, TopK(K)):
            layer.router(hidden)  # the router vouches for its own output, not for this one
            got = layer.experts(hidden, index, weight)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
