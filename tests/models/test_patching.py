"""patched(): identity under TopK, analyze is bit-identical, restore on exit, fewer pairs with BH."""

import pytest
import torch
from moe_tiny import BACKENDS, E, K, tiny_model, tokens

from bh_routing import BH, CalibrationBuilder, CalibrationMismatchError, TopK, TopP
from bh_routing.models import get_adapter, model_fingerprint, patched


def _logits(model, x, **kw):
    with torch.no_grad():
        return model(x, **kw).logits


def _assert_unpatched(model):
    for layer in get_adapter(model).find_layers(model):
        assert "forward" not in layer.router.__dict__
        assert "forward" not in layer.experts.__dict__


def test_topk_at_model_k_reproduces_the_model(family):
    model, x = tiny_model(family), tokens()
    ref = _logits(model, x)
    with patched(model, TopK(K)) as rec:
        out = _logits(model, x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert rec.mean_experts_per_token() == K
    assert rec.compute_fraction() == 1.0


def test_analyze_is_bit_identical_and_records_the_strategy(family):
    model, x = tiny_model(family), tokens()
    ref = _logits(model, x)
    with patched(model, BH(0.05), "analyze") as rec:
        out = _logits(model, x)
    assert torch.equal(out, ref)
    assert rec.tokens_per_layer().tolist() == [x.numel()] * rec.num_layers
    assert 1 <= rec.mean_experts_per_token() <= K
    assert rec.compute_fraction() == 1.0  # the model computed its own top-k


def test_exit_restores_bit_identical_outputs_also_after_an_exception(family):
    model, x = tiny_model(family), tokens()
    ref = _logits(model, x)
    with patched(model, BH(0.05)):
        _logits(model, x)
    assert torch.equal(_logits(model, x), ref)
    _assert_unpatched(model)
    with pytest.raises(KeyError, match="boom"):
        with patched(model, TopP(0.5)):
            _logits(model, x)
            raise KeyError("boom")
    assert torch.equal(_logits(model, x), ref)
    _assert_unpatched(model)


def test_bh_computes_fewer_pairs_and_the_recorder_counts_them(family):
    model, x = tiny_model(family), tokens(length=16)
    with patched(model, BH(0.05)) as rec:
        out = _logits(model, x)
    assert torch.isfinite(out).all()
    computed, dense = sum(rec.computed_pairs()), sum(rec.dense_pairs())
    assert dense == rec.num_layers * x.numel() * K
    assert computed == rec.selected_pairs() < dense  # no padding tokens: computed = chosen
    assert rec.mean_experts_per_token() == pytest.approx(computed / (rec.num_layers * x.numel()))


def test_recorded_choice_is_the_strategy_on_the_router_logits(family):
    """The router's logits (as output_router_logits reports them) routed by the strategy directly."""
    model, x = tiny_model(family), tokens()
    strategy = BH(0.2, max_k=4)
    with patched(model, strategy, record_tokens=True) as rec:
        with torch.no_grad():
            out = model(x, output_router_logits=True)
    assert len(out.router_logits) == rec.num_layers  # transformers' own recording still works
    for layer, logits in enumerate(out.router_logits):
        direct = strategy.route(logits.float(), layer=layer, model_top_k=K)
        got = rec.tokens(layer)
        assert torch.equal(got["logits"], logits.float())
        assert torch.equal(got["indices"], direct.indices)
        assert torch.equal(got["counts"], direct.counts)


def test_per_layer_strategies_and_default(family):
    model, x = tiny_model(family), tokens()
    n = len(get_adapter(model).find_layers(model))
    with patched(model, {0: TopK(1), "default": TopK(K)}) as rec:
        _logits(model, x)
    assert rec.mean_k_per_layer().tolist() == [1.0] + [float(K)] * (n - 1)
    assert "strategies" in rec.to_dict()
    with patched(model, {i: TopK(1 + i % 2) for i in range(n)}) as rec:
        _logits(model, x)
    assert rec.mean_k_per_layer().tolist() == [1.0 + i % 2 for i in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_under_patch(family, backend):
    model, x = tiny_model(family, backend=backend), tokens(length=5)
    with patched(model, BH(0.1)) as rec:
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 9)
    # prompt (5 tokens) then 3 decoding steps of one token each reach the routers
    assert rec.tokens_per_layer().tolist() == [2 * 8] * rec.num_layers
    assert sum(rec.computed_pairs()) < sum(rec.dense_pairs())


def test_padding_tokens_are_left_out_of_the_statistics():
    model, x = tiny_model("olmoe"), tokens(batch=2, length=6)
    mask = torch.ones_like(x)
    mask[0, :2] = 0  # left padding of the first sequence
    with patched(model, BH(0.1), record_tokens=True) as rec:
        with torch.no_grad():
            model(x, attention_mask=mask)
            model(x)  # without a mask every position counts
    assert rec.tokens_per_layer().tolist() == [10 + 12] * rec.num_layers
    valid = rec.tokens(0)["valid"]
    assert valid.tolist() == [False, False] + [True] * 22


def test_calibrated_bh_on_its_own_model():
    model, x = tiny_model("olmoe"), tokens(batch=4, length=16)
    with torch.no_grad():
        logits = model(x, output_router_logits=True).router_logits
    builder = CalibrationBuilder(num_layers=len(logits), num_experts=E, top_k=K, reservoir_size=256)
    for i, z in enumerate(logits):
        builder.update(i, z)
    cal = builder.finalize(model_name="tiny-olmoe", model_fingerprint=model_fingerprint(model))
    with patched(model, BH(0.2, pvalues="calibrated", calibration=cal)) as rec:
        _logits(model, x)
    assert 1 <= rec.mean_experts_per_token() <= K


# --- bad input: each with its message -----------------------------------------------------------


def test_wrong_mode():
    model = tiny_model("olmoe")
    with pytest.raises(ValueError, match=r"mode must be one of \('patch', 'analyze'\), got 'Patch'"):
        with patched(model, TopK(K), "Patch"):
            pass


def test_patching_twice_is_refused():
    model = tiny_model("olmoe")
    with patched(model, TopK(K)):
        with pytest.raises(RuntimeError, match="already patched by bh_routing.models.patched"):
            with patched(model.model, BH(0.05), "analyze"):  # the inner model shares the routers
                pass
    with patched(model, TopK(K)):  # after exit it can be patched again
        pass


def test_mapping_missing_layers():
    model = tiny_model("olmoe")  # 3 MoE layers
    with pytest.raises(ValueError, match=r"strategy mapping misses MoE layers \[1, 2\] .*'default' key"):
        with patched(model, {0: TopK(K)}):
            pass
    with pytest.raises(ValueError, match=r"strategy keys must be MoE-layer ordinals in \[0, 3\) or 'default', got \[3\]"):
        with patched(model, {3: TopK(K), "default": TopK(K)}):
            pass
    with pytest.raises(TypeError, match="strategy for layer 0 must be a Strategy, got str"):
        with patched(model, {0: "bh", "default": TopK(K)}):
            pass
    with pytest.raises(TypeError, match="strategy must be a Strategy or a mapping"):
        with patched(model, "bh"):
            pass
    _assert_unpatched(model)


def test_setting_that_does_not_fit_raises_before_patching():
    model = tiny_model("olmoe")
    with pytest.raises(ValueError, match=r"max_k must be <= the number of experts \(8\), got 9"):
        with patched(model, {0: TopK(K), "default": BH(0.05, max_k=9)}):
            pass
    _assert_unpatched(model)


def test_calibration_for_another_model():
    model, other = tiny_model("olmoe", seed=0), tiny_model("olmoe", seed=1)
    builder = CalibrationBuilder(num_layers=3, num_experts=E, top_k=K, reservoir_size=8)
    for i in range(3):
        builder.update(i, torch.randn(32, E))
    cal = builder.finalize(model_name="other-model", model_fingerprint=model_fingerprint(other))
    with pytest.raises(CalibrationMismatchError, match="calibration was made for other-model .*router weights differ"):
        with patched(model, BH(0.05, pvalues="calibrated", calibration=cal)):
            pass
    builder = CalibrationBuilder(num_layers=2, num_experts=E, top_k=K, reservoir_size=8)
    for i in range(2):
        builder.update(i, torch.randn(32, E))
    cal = builder.finalize(model_name="two-layer-model", model_fingerprint=model_fingerprint(model))
    with pytest.raises(CalibrationMismatchError, match=r"two-layer-model \(2 MoE layers x 8 experts\), not for .*\(3 MoE layers"):
        with patched(model, BH(0.05, pvalues="calibrated", calibration=cal)):
            pass
    _assert_unpatched(model)
