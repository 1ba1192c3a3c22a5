"""Routing strategies: one RoutingResult contract, each rule as documented."""

import pytest
import torch

from bh_routing import BH, CalibrationBuilder, TopK, TopP, WeightRatio, bh_select, empirical_null_pvalues

E = 16


def _logits(t=200, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t, E, generator=g)
    z[:, :2] += 3 * torch.rand(t, 1, generator=g)  # some tokens have clear winners
    return z.to(dtype)


def _check_contract(r, t, width):
    assert r.indices.shape == (t, width) and r.weights.shape == (t, width) and r.counts.shape == (t,)
    used = torch.arange(width) < r.counts[:, None]
    assert torch.all((r.indices == E) == ~used)  # sentinel exactly in the unused slots
    assert torch.all(r.weights[~used] == 0)
    assert torch.all(r.weights[used] > 0)
    assert torch.equal(r.mask.sum(1), r.counts)
    # no expert chosen twice
    for row, c in zip(r.indices, r.counts):
        assert len(set(row[:c].tolist())) == int(c)


@pytest.mark.parametrize(
    "strategy,width",
    [(TopK(4), 4), (TopP(0.6), 4), (WeightRatio(0.2), 4), (BH(0.1), 4), (BH(0.1, max_k=E), E)],
)
def test_contract(strategy, width):
    z = _logits()
    _check_contract(strategy.route(z, model_top_k=4), len(z), width)


def test_topk_matches_the_olmoe_router_exactly():
    z = _logits(dtype=torch.bfloat16)
    probs = torch.softmax(z, dim=-1, dtype=torch.float)
    val, idx = torch.topk(probs, 8, dim=-1)
    r = TopK(8).route(z)
    assert torch.equal(r.indices, idx) and torch.equal(r.weights, val.to(torch.bfloat16))
    r = TopK(8).route(z, norm_topk_prob=True)
    torch.testing.assert_close(r.weights.float().sum(-1), torch.ones(len(z)), atol=1e-2, rtol=0)


def test_weight_rules():
    z = _logits()
    probs = torch.softmax(z, -1)
    r = BH(0.2, weight_rule="softmax").route(z, norm_topk_prob=True)
    used = r.indices < E
    torch.testing.assert_close(r.weights[used], probs.gather(1, r.indices.clamp(max=E - 1))[used])
    r = BH(0.2, weight_rule="renormalize").route(z)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(len(z)))


def test_topp_is_smallest_set_reaching_mass():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    counts = {p: TopP(p, max_k=4).route(z).counts.item() for p in (0.4, 0.5, 0.79, 0.8, 0.81, 0.96, 1.0)}
    assert counts == {0.4: 1, 0.5: 1, 0.79: 2, 0.8: 2, 0.81: 3, 0.96: 4, 1.0: 4}


def test_weight_ratio_rule():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert WeightRatio(0.5, max_k=4).route(z).counts.item() == 2  # 0.3 >= 0.25, 0.15 < 0.25
    assert WeightRatio(0.09, max_k=4).route(z).counts.item() == 4
    assert WeightRatio(1.0, max_k=4).route(z).counts.item() == 1


def test_bh_selects_exactly_bh_then_clamps():
    z = _logits(500)
    p = empirical_null_pvalues(z)
    for alpha in (0.01, 0.1, 0.5):
        r = BH(alpha, min_k=0, max_k=E).route(z)
        assert torch.equal(r.mask, bh_select(p, alpha))
        r = BH(alpha, min_k=2, max_k=5).route(z)
        assert torch.equal(r.mask, bh_select(p, alpha, min_k=2, max_k=5))


def test_bh_counts_monotone_in_alpha_and_max_k_default_is_model_top_k():
    z = _logits(500)
    means = [BH(a).route(z, model_top_k=8).counts.float().mean().item() for a in (0.001, 0.01, 0.1, 0.5)]
    assert means == sorted(means) and means[0] < means[-1]
    assert BH(1.0).route(z, model_top_k=8).counts.max().item() == 8
    assert BH(1.0).route(z).counts.max().item() <= E  # no model k: E


def test_bh_calibrated_uses_layer_tables():
    b = CalibrationBuilder(num_layers=2, num_experts=E, top_k=2)
    g = torch.Generator().manual_seed(0)
    b.update(0, torch.randn(3000, E, generator=g))
    b.update(1, 5 + torch.randn(3000, E, generator=g))  # layer 1's null sits much higher
    cal = b.finalize(model_name="m", model_fingerprint="f")
    s = BH(0.1, pvalues="calibrated", calibration=cal, max_k=E)
    z = _logits(300)
    assert s.route(z, layer=0).counts.float().mean() > s.route(z, layer=1).counts.float().mean()
    with pytest.raises(ValueError, match="needs the MoE layer index"):
        s.route(z)


def test_batched_vs_row_by_row_and_dtypes():
    z = _logits(64)
    full = BH(0.1).route(z, model_top_k=4)
    for i in range(0, 64, 9):
        one = BH(0.1).route(z[i : i + 1], model_top_k=4)
        assert torch.equal(one.indices[0], full.indices[i])
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        r = BH(0.1).route(z.to(dtype), model_top_k=4)
        assert r.weights.dtype == dtype and r.indices.dtype == torch.int64


def test_describe_is_jsonable():
    import json

    for s in (TopK(2), TopP(0.5), WeightRatio(0.3), BH(0.05, temperature=2.0)):
        d = s.describe()
        json.dumps(d)
        assert d["name"] == s.name
