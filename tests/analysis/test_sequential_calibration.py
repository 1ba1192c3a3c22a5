"""Sequential calibration on a model: each layer's null equals one fitted by hand under the same routing."""

import torch
from transformers import AutoModelForCausalLM

from bh_routing.analysis.sequential import fit_sequential_calibration
from bh_routing.core import BH, CalibrationBuilder, TopK
from bh_routing.models import patched


@torch.no_grad()
def test_each_layer_is_fitted_under_the_strategy_below(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    seqs = torch.randint(3, 200, (6, 16), generator=torch.Generator().manual_seed(1))

    def make(cal):
        return BH(0.2, pvalues="calibrated", calibration=cal, min_k=1)

    cal = fit_sequential_calibration(model, seqs, make, null="unrouted", reservoir_size=96, seed=3, model_name="tiny", batch_size=4)
    assert cal.num_layers == 2 and cal.null_count.sum(dim=1).tolist() == [6 * 16 * 12] * 2
    # by hand: layer 0 under the model's routing; layer 1 with layer 0 routed by BH on the final layer-0 null
    for layer, mapping in ((0, {"default": TopK(4)}), (1, {0: make(cal), "default": TopK(4)})):
        b = CalibrationBuilder(num_layers=1, num_experts=16, top_k=4, null="unrouted", reservoir_size=96, seed=3 + layer)
        with patched(model, mapping, mode="patch", record_tokens=True) as rec:
            for start in (0, 4):
                rec.reset()
                model(input_ids=seqs[start : start + 4])  # full forward, no early stop
                b.update(0, rec.tokens(layer)["logits"])
        expected = b.finalize(model_name="tiny", model_fingerprint="x")
        assert torch.equal(cal.null_sorted[layer], expected.null_sorted[0])
    # and BH routing in layer 0 does change what layer 1 sees (else the test would prove nothing)
    with patched(model, TopK(4), mode="analyze", record_tokens=True) as rec:
        model(input_ids=seqs[:4])
        plain = rec.tokens(1)["logits"]
    with patched(model, {0: make(cal), "default": TopK(4)}, mode="patch", record_tokens=True) as rec:
        model(input_ids=seqs[:4])
        routed = rec.tokens(1)["logits"]
    assert not torch.allclose(plain, routed)
