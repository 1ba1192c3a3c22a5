"""Variable k on every experts backend: exact against a direct reference, no NaN, only chosen pairs.

The reference computes each token's output from its chosen experts' weights directly, in
float64, from the indices and weights the Recorder saw the router return.
"""

import zlib

import pytest
import torch
from moe_tiny import BACKENDS, E, FAMILIES, H, tiny_model

from bh_routing import BH, Strategy, TopP, WeightRatio
from bh_routing.models import experts as experts_module
from bh_routing.models import get_adapter, patched

PASSES = 200  # random forward passes per family and backend


def _expert_out(experts, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Outputs (n, H) of experts e (n,) on rows x (n, H), in float64, from the weights directly."""
    x = x.double()
    up_w, down_w = experts.gate_up_proj.double()[e], experts.down_proj.double()[e]
    if getattr(experts, "is_transposed", False):  # gpt-oss: (E, H, 2I), (E, I, H), biases, own gate
        gate_up = torch.einsum("nh,nhj->nj", x, up_w) + experts.gate_up_proj_bias.double()[e]
        act = experts._apply_gate(gate_up)
        return torch.einsum("ni,nih->nh", act, down_w) + experts.down_proj_bias.double()[e]
    gate, up = torch.einsum("njh,nh->nj", up_w, x).chunk(2, dim=-1)  # (E, 2I, H) layout
    return torch.einsum("nhi,ni->nh", down_w, experts.act_fn(gate) * up)


def _reference(block, layer, x: torch.Tensor, rec) -> torch.Tensor:
    """The block's output from the recorded choice of its last call: routed + shared experts."""
    got = rec.tokens(layer.ordinal)
    t = x.shape[0]
    idx, w = got["indices"][-t:], got["weights"][-t:].double()  # (T, W)
    token, slot = (idx < E).nonzero(as_tuple=True)
    y = torch.zeros(t, H, dtype=torch.float64)
    y.index_add_(0, token, _expert_out(layer.experts, idx[token, slot], x[token]) * w[token, slot, None])
    if hasattr(block, "shared_expert"):  # Qwen2-MoE
        y += (torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)).double()
    if hasattr(block, "shared_experts"):  # DeepSeek-V3
        y += block.shared_experts(x).double()
    return y


def _random_strategy(g: torch.Generator) -> Strategy:
    u = torch.rand(3, generator=g).tolist()
    kind = int(torch.randint(0, 3, (1,), generator=g))
    max_k = int(torch.randint(1, E + 1, (1,), generator=g))
    min_k = int(torch.randint(0, 2, (1,), generator=g))  # 0 lets some tokens use no expert at all
    if kind == 0:
        return BH(0.01 + 0.6 * u[0], min_k=min(min_k, max_k), max_k=max_k)
    if kind == 1:
        return TopP(0.05 + 0.95 * u[1], min_k=min(min_k, max_k), max_k=max_k)
    return WeightRatio(0.05 + 0.95 * u[2], min_k=min(min_k, max_k), max_k=max_k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_stress_random_passes_match_the_direct_reference(family, backend):
    model = tiny_model(family, backend=backend)
    layer = get_adapter(model).find_layers(model)[-1]
    block = layer.block
    g = torch.Generator().manual_seed(zlib.crc32(f"{family}/{backend}".encode()))
    widths = set()
    for _ in range(PASSES):
        t = int(torch.randint(1, 25, (1,), generator=g))
        x = torch.randn(t, H, generator=g).unsqueeze(0)  # (1, T, H)
        strategy = _random_strategy(g)
        with torch.no_grad(), patched(model, strategy, record_tokens=True) as rec:
            out = block(x)
            out = out[0] if isinstance(out, tuple) else out  # gpt-oss returns (hidden, scores)
            ref = _reference(block, layer, x[0], rec)
        assert torch.isfinite(out).all(), f"NaN/inf with {strategy} on {backend}"
        torch.testing.assert_close(out[0].double(), ref, rtol=1e-4, atol=1e-5)
        counts = rec.tokens(layer.ordinal)["counts"]
        assert rec.computed_pairs()[layer.ordinal] == int(counts.sum())
        widths.add((int(counts.min()), int(counts.max())))
    assert any(lo == 0 for lo, _ in widths) and any(hi > 2 for _, hi in widths)  # k varied widely


class _OnlyFirstTwo(Strategy):
    """Chooses experts 0 then 1 only, 0 to 2 of them per token, padded to width 4."""

    name = "only_first_two"
    weight_rule = "softmax"

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def choose(self, logits, probs, *, layer, model_top_k):
        t, e = probs.shape
        order = torch.arange(e).expand(t, e)
        counts = torch.randint(0, 3, (t,), generator=self.g)
        return order, counts, 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_unchosen_experts_are_never_computed(family, backend):
    """Experts 2..E-1 poisoned with NaN: any computation of them (or of a padding slot) would show."""
    model = tiny_model(family, backend=backend)
    layers = get_adapter(model).find_layers(model)
    with torch.no_grad():
        for layer in layers:
            for p in layer.experts.parameters():
                p[2:] = float("nan")
    seen: list[torch.Tensor] = []
    rows: list[tuple[int, int]] = []  # grouped_mm's static path: (rows handed, rows below the last offset)
    real_grouped_mm = experts_module._grouped_mm

    def grouped_spy(x, weight, offsets):
        rows.append((x.shape[0], int(offsets[-1])))
        return real_grouped_mm(x, weight, offsets)

    experts_module._grouped_mm = grouped_spy
    for layer in layers:  # a spy under the patch: what the backend really receives
        original = layer.experts.forward

        def spy(hidden, index, weights, *args, _original=original, **kwargs):
            seen.append(index.clone())
            return _original(hidden, index, weights, *args, **kwargs)

        layer.experts.forward = spy
    try:
        x = torch.randint(3, 64, (2, 12))
        with torch.no_grad(), patched(model, _OnlyFirstTwo(seed=1)) as rec:
            out = model(x).logits
    finally:
        experts_module._grouped_mm = real_grouped_mm
        for layer in layers:
            del layer.experts.forward
    assert torch.isfinite(out).all()
    if backend == "grouped_mm":  # our own grouped forward: the backend is not called, the GEMMs are
        assert not seen and len(rows) == 2 * len(layers)  # up and down projection per layer
        assert all(n == 4 * x.numel() for n, _ in rows)  # static shape: every slot handed, T x W ...
        computed = sum(real for _, real in rows[::2])  # ... but only the rows below the last offset computed
        assert computed == sum(rec.computed_pairs()) == rec.selected_pairs()
    assert all(bool((s < 2).all()) for s in seen)  # only experts 0 and 1, never the padding index
    if backend != "grouped_mm":
        assert sum(s.numel() for s in seen) == sum(rec.computed_pairs()) == rec.selected_pairs()
    assert rec.selected_pairs() < len(layers) * x.numel() * 4
