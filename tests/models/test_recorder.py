"""The Recorder: streaming aggregates agree with the per-token records; JSON summary; reset."""

import json
import math

import pytest
import torch
from moe_tiny import E, tiny_model, tokens

from bh_routing import BH, TopK
from bh_routing.models import Recorder, patched


def test_aggregates_agree_with_the_token_records():
    model = tiny_model("olmoe")
    with torch.no_grad(), patched(model, BH(0.3, max_k=6), record_tokens=True) as rec:
        model(tokens(seed=1))
        model(tokens(seed=2, batch=1, length=5))
    assert rec.tokens_per_layer().tolist() == [18 + 5] * 3
    for layer in range(rec.num_layers):
        got = rec.tokens(layer)
        n = got["counts"].shape[0]
        assert n == 23 and got["indices"].shape == (n, 6) and got["logits"].shape == (n, E)
        counts = torch.bincount(got["indices"].flatten(), minlength=E + 1)[:E]
        assert torch.equal(rec.expert_counts()[layer], counts)
        assert torch.equal(rec.k_histogram()[layer], torch.bincount(got["counts"], minlength=7))
        assert rec.mean_k_per_layer()[layer].item() == pytest.approx(got["counts"].float().mean().item())
        torch.testing.assert_close(got["probs"], torch.softmax(got["logits"], dim=-1))
        assert torch.all(got["weights"][got["indices"] == E] == 0)
    assert rec.k_histogram().shape == (3, 7)
    total = sum(int(rec.tokens(i)["counts"].sum()) for i in range(3))
    assert rec.mean_experts_per_token() == pytest.approx(total / (3 * 23))


def test_to_dict_is_json_and_reset_forgets():
    model = tiny_model("qwen2_moe")
    with torch.no_grad(), patched(model, BH(0.05)) as rec:
        model(tokens())
    summary = json.loads(json.dumps(rec.to_dict()))
    assert summary["family"] == "qwen2_moe" and summary["mode"] == "patch"
    assert summary["strategy"]["name"] == "bh" and summary["strategy"]["alpha"] == 0.05
    assert summary["layers"] == ["model.layers.0.mlp.gate", "model.layers.2.mlp.gate"]
    assert len(summary["expert_counts"]) == 2 and len(summary["expert_counts"][0]) == E
    assert 0 < summary["compute_fraction"] < 1
    rec.reset()
    assert math.isnan(rec.mean_experts_per_token())
    assert rec.tokens_per_layer().tolist() == [0, 0]
    assert json.loads(json.dumps(rec.to_dict()))["mean_experts_per_token"] is None


def test_token_records_need_the_flag():
    rec = Recorder(num_layers=2, num_experts=4, model_top_k=2)
    with pytest.raises(ValueError, match="per-token records need record_tokens=True"):
        rec.tokens(0)
    with pytest.raises(ValueError, match="num_layers and num_experts must be >= 1, got 0 and 4"):
        Recorder(num_layers=0, num_experts=4, model_top_k=2)


def test_deepseek_records_sigmoid_scores():
    model = tiny_model("deepseek_v3")
    with torch.no_grad(), patched(model, BH(0.1), "analyze", record_tokens=True) as rec:
        model(tokens())
    got = rec.tokens(0)
    torch.testing.assert_close(got["probs"], torch.sigmoid(got["logits"]))
    # family weights: sigmoid scores renormalised (norm_topk_prob=True) times routed_scaling_factor
    used = got["indices"] < E
    assert torch.allclose(got["weights"].sum(dim=1)[used.any(1)], torch.tensor(2.5))


def test_model_overlap_in_analyze_mode():
    model = tiny_model("mixtral")
    with torch.no_grad(), patched(model, {0: TopK(2), 1: TopK(1), 2: TopK(8)}, "analyze") as rec:
        model(tokens())
    # TopK(2) is the model's own choice; TopK(1) is its best expert; of TopK(8) the model ran 2
    assert rec.model_overlap().tolist() == [1.0, 1.0, 0.25]
    with torch.no_grad(), patched(model, TopK(2)) as rec:
        model(tokens())
    assert math.isnan(rec.model_overlap()[0])  # patch mode: the model's own choice is not run
