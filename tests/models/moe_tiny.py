"""Tiny random-config models of every supported family, built from the real transformers classes."""

import torch
import transformers

FAMILIES = ("olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss")
BACKENDS = ("eager", "grouped_mm", "batched_mm")
E, K, H, V = 8, 2, 32, 64  # experts, top-k, hidden size, vocabulary

_COMMON = dict(
    hidden_size=H,
    num_hidden_layers=3,
    vocab_size=V,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)


def tiny_config(family: str, **overrides):
    """A 3-layer config with 8 experts, top-2; Qwen2-MoE's layer 1 and DeepSeek-V3's layer 0 dense."""
    c = dict(_COMMON)
    if family == "olmoe":
        cfg = transformers.OlmoeConfig(num_experts=E, num_experts_per_tok=K, intermediate_size=16, **c)
    elif family == "mixtral":
        cfg = transformers.MixtralConfig(num_local_experts=E, num_experts_per_tok=K, intermediate_size=16, **c)
    elif family == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(
            num_experts=E, num_experts_per_tok=K, moe_intermediate_size=16, shared_expert_intermediate_size=24,
            intermediate_size=24, decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=False, **c,
        )
    elif family == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(
            num_experts=E, num_experts_per_tok=K, moe_intermediate_size=16, intermediate_size=24,
            norm_topk_prob=True, head_dim=8, **c,
        )
    elif family == "deepseek_v3":
        c["num_key_value_heads"] = 4  # MLA: as many key/value heads as query heads
        cfg = transformers.DeepseekV3Config(
            n_routed_experts=E, num_experts_per_tok=K, moe_intermediate_size=16, intermediate_size=24,
            n_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=2, q_lora_rank=None,
            kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, routed_scaling_factor=2.5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **c,
        )
    elif family == "gpt_oss":
        cfg = transformers.GptOssConfig(
            num_local_experts=E, num_experts_per_tok=K, intermediate_size=16, head_dim=8, sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **c,
        )
    else:
        raise ValueError(family)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(family: str, *, seed: int = 0, backend: str | None = None, **overrides):
    """An eval-mode tiny model; router weights std 1 so that routing varies across tokens."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).eval()
    from bh_routing.models import get_adapter

    with torch.no_grad():
        for layer in get_adapter(model).find_layers(model):
            layer.router.weight.normal_(0.0, 1.0)
            for p in layer.experts.parameters():
                p.normal_(0.0, 0.2)
    if backend is not None:
        model.set_experts_implementation(backend)
    return model


def tokens(seed: int = 0, batch: int = 2, length: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (batch, length), generator=g)
