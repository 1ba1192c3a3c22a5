"""A patched model is captured whole: torch.compile(fullgraph=True) and static-cache generation.

The static patch path (sync-free routing, grouped experts by device-side offsets, device-side
recording) has no host read and no data-dependent shape, so dynamo captures the embedded model
in one graph under every strategy. The dynamo backend ``aot_eager`` (functionalisation and
decompositions, no code generation) keeps these tests to seconds; inductor's code generation is
checked once (slow). Tolerance: aot_eager runs the same kernels, so outputs are equal bit for bit
(the static torch path routes exactly as the CPU fast paths); inductor reorders float32 sums,
so its logits are compared at 1e-4 and its greedy tokens exactly.
"""

import warnings

import pytest
import torch
from transformers import CompileConfig

from bh_routing import BH, CalibrationBuilder, TopP
from bh_routing.core.strategies import Entropy
from bh_routing.embedded import default_eval_text
from bh_routing.models import load_model, model_fingerprint, patched


def _calibration(model, tokenizer):
    """The embedded model's router logits on 8 x 128 tokens of the held-out text ('unrouted' null)."""
    ids = torch.tensor(tokenizer(default_eval_text())["input_ids"][: 8 * 128]).view(8, 128)  # (8, 128)
    with torch.no_grad():
        logits = model(ids, output_router_logits=True).router_logits
    builder = CalibrationBuilder(num_layers=len(logits), num_experts=64, top_k=8, reservoir_size=512)
    for layer, z in enumerate(logits):
        builder.update(layer, z)
    return builder.finalize(model_name="embedded", model_fingerprint=model_fingerprint(model))


@pytest.fixture(scope="module")
def embedded():
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    model, tokenizer = load_model(None, device="cpu", dtype="float32")
    model.set_experts_implementation("grouped_mm")
    return model, tokenizer, _calibration(model, tokenizer)


def _strategies(calibration):
    return {
        "bh-empirical": BH(0.05),
        "bh-calibrated-router": BH(0.05, pvalues="calibrated", calibration=calibration, selection="router"),
        "topp": TopP(0.6),
        "entropy": Entropy(1.0),
    }


def _prompts(tokenizer):
    tokenizer.padding_side = "left"
    enc = tokenizer(["The cat sat on the", "In the beginning there was"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _generate(model, ids, mask, *, compiled: bool, backend: str = "aot_eager"):
    config = CompileConfig(fullgraph=True, dynamic=False, backend=backend, mode=None)
    config._compile_all_devices = True  # transformers compiles on accelerators only unless told
    kwargs = {"compile_config": config} if compiled else {"disable_compile": True}
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=10, do_sample=False, cache_implementation="static", **kwargs
    )


@pytest.mark.parametrize("name", ["bh-empirical", "bh-calibrated-router", "topp", "entropy"])
def test_static_cache_generation_with_a_compiled_forward_equals_eager(embedded, name):
    """Greedy generation, static cache, the decode forward compiled with fullgraph=True: the tokens
    and the Recorder's numbers equal the eager patched model's."""
    model, tokenizer, calibration = embedded
    ids, mask = _prompts(tokenizer)
    strategy = _strategies(calibration)[name]
    torch._dynamo.reset()
    model.__dict__.pop("_compiled_call", None)
    with torch.no_grad(), patched(model, strategy) as eager_rec:
        eager = _generate(model, ids, mask, compiled=False)
    with torch.no_grad(), patched(model, strategy) as compiled_rec:
        compiled = _generate(model, ids, mask, compiled=True)
    assert "_compiled_call" in model.__dict__  # the decode steps ran compiled
    model.__dict__.pop("_compiled_call", None)
    assert torch.equal(eager, compiled)
    assert compiled_rec.to_dict() == eager_rec.to_dict()
    assert compiled_rec.mean_experts_per_token() < 8  # variable k really ran


def test_fullgraph_forward_equals_eager_and_recompiles_never(embedded):
    """One graph for three calls (no guard on recorder state), logits equal eager's bit for bit."""
    from torch._dynamo.utils import counters

    model, tokenizer, calibration = embedded
    ids = torch.randint(model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))  # (B, S)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad(), patched(model, BH(0.05, pvalues="standardized", calibration=calibration)) as rec:
        step = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
        outs = [step(ids).logits for _ in range(3)]
        compiled_counts = rec.expert_counts().clone()
        rec.reset()
        eager = model(ids).logits
        assert torch.equal(rec.expert_counts() * 3, compiled_counts)
    assert counters["stats"]["unique_graphs"] == 1
    for out in outs:
        assert torch.equal(out, eager)


def test_nonfinite_logits_are_reported_at_the_end_of_the_block(embedded):
    """The logits check moved out of the hot path: a NaN routed by a patched call raises when the
    block ends, with the check's message (no host read per layer)."""
    model, _, _ = embedded
    router = model.model.layers[1].mlp.gate
    saved = router.weight.detach().clone()
    ids = torch.randint(model.config.vocab_size, (1, 5))
    try:
        with torch.no_grad():
            router.weight[3, 0] = float("nan")
        with pytest.raises(ValueError, match=r"logits must be finite, got NaN or inf in the router logits of MoE layer\(s\) \[1, 2, 3\]"):  # the NaN flows on
            with torch.no_grad(), patched(model, BH(0.05)):
                model(ids)
    finally:
        with torch.no_grad():
            router.weight.copy_(saved)
    with torch.no_grad(), patched(model, BH(0.05)):  # finite again: no error
        model(ids)


@pytest.mark.slow
def test_inductor_compiles_the_patched_model_and_generates_the_same_tokens(embedded):
    """Inductor's code generation (C++ on the CPU): greedy tokens equal eager; logits within 1e-4."""
    model, tokenizer, _ = embedded
    ids, mask = _prompts(tokenizer)
    torch._dynamo.reset()
    with torch.no_grad(), patched(model, BH(0.05)):
        eager_logits = model(ids, attention_mask=mask).logits
        step = torch.compile(model, fullgraph=True, dynamic=False)
        torch.testing.assert_close(step(ids, attention_mask=mask).logits, eager_logits, rtol=1e-4, atol=1e-4)
