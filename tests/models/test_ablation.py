"""The ablation oracle's records against a direct computation: the MoE block run with an expert removed."""

import pytest
import torch
from moe_tiny import tiny_model, tokens

from bh_routing.models import get_adapter, patched
from bh_routing.models.ablation import ablation_effects, concat_layer, recording_ablation
from bh_routing.core import BH


def _block_inputs(model, ids):
    """The hidden states (B, S, H) entering each MoE block, and the blocks' outputs."""
    layers = get_adapter(model).find_layers(model)
    seen = {}

    def grab(ordinal):
        def hook(module, args, kwargs, output):
            seen[ordinal] = (kwargs.get("hidden_states", args[0] if args else None).detach().clone(), output)

        return hook

    handles = [l.block.register_forward_hook(grab(l.ordinal), with_kwargs=True) for l in layers]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return layers, seen


def _routed(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def test_olmoe_effect_equals_block_with_the_expert_zeroed():
    # norm_topk_prob=False: removing expert e = zeroing its weights; run the real block that way
    model = tiny_model("olmoe", backend="eager")
    ids = tokens(seed=3, batch=2, length=11)
    with recording_ablation(model) as records:
        model(input_ids=ids)
    layers, seen = _block_inputs(model, ids)
    for layer in layers:
        rec = concat_layer(records[layer.ordinal])
        hidden, full = seen[layer.ordinal]
        full = _routed(full).reshape(-1, hidden.shape[-1]).float()  # (T, H)
        expected = torch.full_like(rec.effect, float("nan"))  # (T, k)
        down = layer.experts.down_proj
        for e in range(down.shape[0]):
            saved = down[e].clone()
            down[e].zero_()
            try:
                without = _routed(layer.block(hidden)).reshape(-1, hidden.shape[-1]).float()  # (T, H)
            finally:
                down[e].copy_(saved)
            rel = torch.linalg.vector_norm(full - without, dim=-1) / torch.linalg.vector_norm(full, dim=-1)  # (T,)
            slot = rec.model_indices == e  # (T, k)
            expected[slot] = rel.unsqueeze(1).expand_as(slot)[slot]
        assert not expected.isnan().any()
        torch.testing.assert_close(rec.effect, expected, rtol=1e-4, atol=1e-6)
        # the recorded logits and top-k are the model's own
        assert torch.equal(rec.model_indices.sort(dim=1).values, rec.logits.topk(2, dim=1).indices.sort(dim=1).values)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
@torch.no_grad()
def test_renormalising_family_effect_equals_block_with_the_slot_dropped(family):
    # norm_topk_prob=True: the remaining weights are renormalised; drop one slot in the router
    model = tiny_model(family, backend="eager")
    ids = tokens(seed=5, batch=1, length=10)
    with recording_ablation(model) as records:
        model(input_ids=ids)
    layers, seen = _block_inputs(model, ids)
    num_experts = get_adapter(model).num_experts(model.config)
    for layer in layers:
        rec = concat_layer(records[layer.ordinal])
        hidden, full = seen[layer.ordinal]
        full = _routed(full).reshape(-1, hidden.shape[-1]).float()
        original = type(layer.router).forward
        for slot in range(rec.model_indices.shape[1]):

            def dropped(self, h, slot=slot):
                logits, w, idx = original(self, h)
                keep = torch.ones_like(w, dtype=torch.bool)
                keep[:, slot] = False
                w = torch.where(keep, w, torch.zeros_like(w))
                w = w / w.sum(dim=1, keepdim=True)
                return logits, w, torch.where(keep, idx, torch.full_like(idx, num_experts))

            layer.router.forward = dropped.__get__(layer.router)
            try:
                without = _routed(layer.block(hidden)).reshape(-1, hidden.shape[-1]).float()
            finally:
                del layer.router.forward
            rel = torch.linalg.vector_norm(full - without, dim=-1) / torch.linalg.vector_norm(full, dim=-1)
            torch.testing.assert_close(rec.effect[:, slot], rel, rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_records_inside_patch_mode_use_the_models_own_top_k_on_the_patched_hidden_states():
    model = tiny_model("olmoe")
    ids = tokens(seed=1)
    with patched(model, BH(0.2), mode="patch", record_tokens=True) as rec, recording_ablation(model) as records:
        model(input_ids=ids)
    for layer in range(rec.num_layers):
        ab = concat_layer(records[layer])
        logits = rec.tokens(layer)["logits"]
        torch.testing.assert_close(ab.logits, logits)  # the same hidden states reached the router
        assert torch.equal(ab.model_indices.sort(1).values, logits.topk(2, dim=1).indices.sort(1).values)
        assert (ab.effect > 0).all() and torch.isfinite(ab.effect).all()


def test_ablation_effects_arithmetic():
    f = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2)
    w = torch.tensor([[0.5, 0.25]])
    # O = (0.5, 0.5); removing expert 0 leaves (0, 0.5): change 0.5 / |O| = 1/sqrt(2)
    eff = ablation_effects(f, w, renormalized=False)
    torch.testing.assert_close(eff, torch.tensor([[0.5, 0.5]]) / 0.5**0.5)
    # renormalised (weights 2/3, 1/3): O = (2/3, 2/3); without 0 -> (0, 2): |(2/3, -4/3)| / |O|
    eff = ablation_effects(f, w / 0.75, renormalized=True)
    o = torch.tensor([2 / 3, 2 / 3])
    torch.testing.assert_close(
        eff[0], torch.stack([(o - torch.tensor([0.0, 2.0])).norm(), (o - torch.tensor([1.0, 0.0])).norm()]) / o.norm()
    )
    assert ablation_effects(torch.zeros(1, 2, 3), w, renormalized=False).tolist() == [[0.0, 0.0]]
