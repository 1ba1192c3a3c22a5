"""The real OLMoE-1B-7B architecture (random weights): patches, runs and records in fp32 and bf16.

One decoder layer of the real size (hidden 2048, 64 experts of width 1024, top-8,
norm_topk_prob=False) from the config shipped in benchmarks/olmoe-1b-7b-0924.config.json. The vocabulary is
cut from 50304 to 4096 to save 0.8 GB and seconds of random fill; it plays no part in routing.
"""

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
import transformers

from bh_routing import BH, TopK
from bh_routing.models import inspect_model, patched

CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "olmoe-1b-7b-0924.config.json"
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def olmoe_1b_7b():
    raw = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    raw.update(num_hidden_layers=1, vocab_size=4096)
    config = transformers.OlmoeConfig(**raw)
    # skip transformers' random init (slow at this size); fill uniformly with std 0.02 instead
    no_init = getattr(getattr(transformers, "initialization", None), "no_init_weights", contextlib.nullcontext)
    with no_init():
        model = transformers.OlmoeForCausalLM(config).eval()
    g = torch.Generator().manual_seed(0)
    bound = 0.02 * math.sqrt(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.uniform_(-bound, bound, generator=g)
    return model


def test_real_architecture_float32_then_bfloat16(olmoe_1b_7b):
    model = olmoe_1b_7b
    info = inspect_model(model)
    assert (info.num_moe_layers, info.num_experts, info.top_k, info.norm_topk_prob) == (1, 64, 8, False)
    x = torch.randint(3, 4096, (2, 8), generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        model.set_experts_implementation("grouped_mm")
        with torch.no_grad():
            ref = model(x).logits
            with patched(model, TopK(8)):
                same = model(x).logits
            with patched(model, BH(0.05), "analyze"):
                analyzed = model(x).logits
            outs = {}
            for backend in ("eager", "grouped_mm", "batched_mm"):
                model.set_experts_implementation(backend)
                with patched(model, BH(0.05), record_tokens=True) as rec:
                    outs[backend] = model(x).logits
                assert torch.isfinite(outs[backend]).all()
                assert 1 <= rec.mean_experts_per_token() <= 8
                assert rec.compute_fraction() < 1
                assert rec.expert_counts().shape == (1, 64) and rec.k_histogram().shape == (1, 9)
                assert rec.tokens(0)["logits"].shape == (16, 64)
        torch.testing.assert_close(same, ref, rtol=0, atol=0)
        assert torch.equal(analyzed, ref)
        tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
        for backend in ("grouped_mm", "batched_mm"):
            torch.testing.assert_close(outs[backend].float(), outs["eager"].float(), **tol)
