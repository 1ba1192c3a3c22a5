"""On a CUDA device: bf16 forward and generate() under patch, every backend (generate() itself
switches grouped_mm to batched_mm for decoding on GPU). Skipped without CUDA; run with -m gpu."""

import pytest
import torch
from moe_tiny import BACKENDS, K, tiny_model, tokens

from bh_routing import BH, TopK
from bh_routing.models import patched

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_bf16_forward_and_generate(backend):
    model = tiny_model("olmoe", backend=backend).to("cuda", torch.bfloat16)
    x = tokens(length=6).cuda()
    with torch.no_grad():
        ref = model(x).logits
        with patched(model, TopK(K)):
            same = model(x).logits
        with patched(model, BH(0.1)) as rec:
            out = model(x).logits
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(same, ref, rtol=2e-2, atol=2e-2)
    assert torch.isfinite(out).all()
    assert gen.shape == (2, 10)
    assert rec.compute_fraction() < 1
    assert model.get_experts_implementation()[""] == backend  # generate() switched it back
