"""Strategy specs of the vLLM plugin (BH_ROUTING_STRATEGY): no vLLM needed."""

import pytest
import torch

from bh_routing import BH, TopK, TopP, WeightRatio
from bh_routing.core import CalibrationBuilder
from bh_routing.vllm import StrategySpecError, strategy_from_spec


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("bh", BH()),
        ("bh:alpha=0.05,pvalues=empirical", BH(0.05, pvalues="empirical")),
        (" BH : alpha=0.1 , max_k=16, min_k=2 ", BH(0.1, max_k=16, min_k=2)),
        ("bh:alpha=1e-2,temperature=2,weight_rule=renormalize", BH(0.01, temperature=2.0, weight_rule="renormalize")),
        ("bh:alpha=0.05,max_k=none", BH(0.05, max_k=None)),
        ("topk:k=4", TopK(4)),
        ("topp:p=0.9,max_k=8", TopP(0.9, max_k=8)),
        ("weight_ratio:beta=0.25", WeightRatio(0.25)),
    ],
)
def test_specs_build_the_strategy(spec, expected):
    got = strategy_from_spec(spec)
    assert type(got) is type(expected)
    assert got.describe() == expected.describe()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "strategy spec is empty"),
        ("bhh:alpha=0.05", "unknown strategy 'bhh'; did you mean 'bh'? (available: topk, topp, weight_ratio, entropy, bh, or module:Class)"),
        ("xyz", "unknown strategy 'xyz' (available: topk, topp, weight_ratio, entropy, bh, or module:Class)"),
        ("bh:alpha", "expected KEY=VALUE in strategy spec 'bh:alpha', got 'alpha'"),
        ("bh:alpha=0.05,alpha=0.1", "key 'alpha' given twice"),
        ("bh:alpha=1.5", "alpha must be in (0, 1], got 1.5"),
        ("bh:pvalues=calibrated", "pvalues='calibrated' needs a calibration"),
        ("bh:colour=red", "unexpected keyword argument 'colour'"),
        ("topk", "missing 1 required positional argument: 'k'"),
        ("bh:calibration=/no/such/file.safetensors", "calibration file not found: /no/such/file.safetensors"),
    ],
)
def test_bad_specs_say_why(spec, message):
    with pytest.raises(StrategySpecError) as err:
        strategy_from_spec(spec)
    assert message in str(err.value)


def test_calibration_path_is_loaded(tmp_path):
    builder = CalibrationBuilder(num_layers=2, num_experts=8, top_k=2, reservoir_size=64, seed=0)
    gen = torch.Generator().manual_seed(0)
    for layer in range(2):
        builder.update(layer, torch.randn(50, 8, generator=gen))
    path = builder.finalize(model_name="tiny", model_fingerprint="sha256:" + "0" * 64).save(tmp_path / "cal.safetensors")
    s = strategy_from_spec(f"bh:alpha=0.1,pvalues=calibrated,calibration={path}")
    assert s.pvalues == "calibrated" and s.calibration.num_layers == 2 and s.alpha == 0.1
