"""The generation benchmark's parts on tiny models: shaped router inputs, expert counting, bytes."""

import json
import math
from pathlib import Path

import pytest
import torch

import bench_generation as bg
from bh_routing import BH, TopK
from bh_routing.models import patched

REFERENCE = Path("/work/shared/reference/olmoe-1b-7b-0924.config.json")


@pytest.fixture(scope="module")
def tiny():
    """2-layer OLMoE with the real expert count and k (64, top-8), tiny widths, bfloat16."""
    model = bg.build_model(bg.olmoe_config(layers=2, tiny=True), dtype=torch.bfloat16)
    model.set_experts_implementation("eager")
    return model


def test_config_is_the_reference_architecture():
    """The copy in benchmarks/ is the reference config (when the shared folder is here to compare)."""
    if not REFERENCE.is_file():
        pytest.skip("no ../shared/reference on this machine")
    assert json.loads(bg.REFERENCE_CONFIG.read_text()) == json.loads(REFERENCE.read_text())


def test_vocabulary_scales_with_the_layers():
    full = bg.olmoe_config(layers=16)
    two = bg.olmoe_config(layers=2)
    assert (full.vocab_size, full.num_hidden_layers, full.eos_token_id) == (50304, 16, 50279)
    assert two.vocab_size % 64 == 0 and two.vocab_size >= 50304 * 2 / 16
    assert two.vocab_size < 50304 * 2 / 16 + 64
    assert two.eos_token_id is None  # 50279 is outside the cut vocabulary


def test_shaped_router_inputs_give_bh_a_variable_k(tiny):
    """Without the shift BH finds almost nothing (k ~ min_k = 1); with it, k varies per token."""
    x = torch.randint(0, tiny.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        with patched(tiny, BH(0.05)) as plain:
            tiny(x)
        shaper = bg.RouterShaper(tiny)
        try:
            with patched(tiny, BH(0.05)) as shaped:
                tiny(x)
        finally:
            shaper.remove()
    assert plain.mean_experts_per_token() < 1.5
    assert 2.0 < shaped.mean_experts_per_token() < 6.0
    hist = shaped.k_histogram().sum(dim=0)  # (W + 1,) tokens per k over layers
    assert int((hist > 0).sum()) >= 4  # many different k


def test_shaper_draws_the_same_shifts_after_reset(tiny):
    x = torch.randint(0, tiny.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    shaper = bg.RouterShaper(tiny)
    try:
        with torch.inference_mode():
            outs = []
            for _ in range(2):
                shaper.reset()
                with patched(tiny, BH(0.05), record_tokens=True) as rec:
                    tiny(x)
                outs.append(rec.tokens(0)["indices"])
    finally:
        shaper.remove()
    assert torch.equal(outs[0], outs[1])


def test_distinct_experts_match_the_recorded_choices(tiny):
    """ExpertCounter's union per decode step equals the union of the recorder's per-token records."""
    batch, new = 3, 4
    prompt = torch.randint(0, tiny.config.vocab_size, (batch, bg.PROMPT_LEN), generator=torch.Generator().manual_seed(2))
    shaper = bg.RouterShaper(tiny)
    counter = bg.ExpertCounter(tiny, batch)
    try:
        with torch.inference_mode(), patched(tiny, BH(0.05), record_tokens=True) as rec:
            out = bg._generate(tiny, prompt, new, bg.StepClock(torch.device("cpu")))
    finally:
        shaper.remove()
        counter.remove()
    assert out.shape == (batch, bg.PROMPT_LEN + new)
    e = tiny.config.num_experts
    for layer in range(2):
        idx = rec.tokens(layer)["indices"][batch * bg.PROMPT_LEN :]  # (steps * B, W): the decode calls
        steps = idx.view(new - 1, batch, -1)  # (steps, B, W)
        expected = [int(s[s < e].unique().numel()) for s in steps]
        assert counter.distinct[layer] == expected
        assert counter.pairs[layer] == [int((s < e).sum()) for s in steps]
    summary = counter.summary()
    assert summary["decode_steps_counted"] == new - 1
    assert summary["distinct_per_layer"] <= min(e, batch * 8)


def test_bytes_per_step(tiny):
    wb = bg.weight_bytes(tiny)
    cfg = tiny.config
    assert wb["per_expert"] == 3 * cfg.hidden_size * cfg.intermediate_size * 2  # gate, up, down in bf16
    total = sum(p.numel() * p.element_size() for p in tiny.parameters())
    experts = 2 * cfg.num_experts * wb["per_expert"]
    assert wb["non_expert"] == total - experts - tiny.model.embed_tokens.weight.numel() * 2
    # batch 1: top-8 reads 8 experts per layer; the ideal ratio is (N + 8 L e) / (N + k L e) plus KV and embedding
    full = bg.step_bytes(wb, layers=2, batch=1, distinct_total=16, new_tokens=8)
    half = bg.step_bytes(wb, layers=2, batch=1, distinct_total=8, new_tokens=8)
    assert full - half == 8 * wb["per_expert"]
    kv = 2 * 1 * (bg.PROMPT_LEN + 4) * wb["kv_per_token_layer"]
    assert math.isclose(full, 16 * wb["per_expert"] + wb["non_expert"] + wb["embedding_row"] + kv)


def test_time_batch_rows_and_headline(tiny):
    strats = {bg.BASELINE: None, "top-8 patched": TopK(8), f"BH {bg.HEADLINE_ALPHA}": BH(bg.HEADLINE_ALPHA)}
    shaper = bg.RouterShaper(tiny)
    try:
        with torch.inference_mode():
            res = bg.time_batch(tiny, shaper, strats, batch=1, new_tokens=3, repeats=1)
    finally:
        shaper.remove()
    for x in res.values():
        x["speedup"] = x["speedup_cpu"]
    assert res[bg.BASELINE]["speedup"] == 1.0 == res[bg.BASELINE]["speedup_wall"]
    assert res["top-8 patched"]["mean_k"] == 8.0 == res[bg.BASELINE]["mean_k"]
    assert res[f"BH {bg.HEADLINE_ALPHA}"]["mean_k"] < 8.0
    rows = [dict(x, backend="eager", batch=1, strategy=n, ideal_speedup=1.5) for n, x in res.items()]
    h = bg.headline(rows, backend="eager")
    bh = res[f"BH {bg.HEADLINE_ALPHA}"]
    assert h["decode_speedup_bh_batch1"] == bh["speedup"]
    assert h["decode_bh_mean_k"] == bh["mean_k"]
    assert math.isclose(h["patch_overhead_decode"], 1 / res["top-8 patched"]["speedup"] - 1)
    assert math.isclose(h["decode_gain_share_of_ideal"], (bh["speedup"] - 1) / 0.5)
    assert "decode_speedup_bh_batch16" not in h  # no batch 16 in these rows


def test_median_interval_is_the_sign_test_interval():
    """n = 15: P(Bin(15, 1/2) <= 3) = 0.018 < 0.025 <= P(<= 4), so the 95 % interval is [x_(4), x_(12)]."""
    from scipy.stats import binom

    assert binom.cdf(3, 15, 0.5) < 0.025 <= binom.cdf(4, 15, 0.5)
    assert bg.median_ci([float(v) for v in range(15, 0, -1)]) == (4.0, 12.0)
    assert bg.median_ci([1.0, 2.0, 3.0]) == (1.0, 3.0)  # too few rounds for 95 %: the whole range
