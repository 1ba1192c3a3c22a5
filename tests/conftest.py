"""Suite-wide settings, and a tiny random OLMoE saved as a local folder with the embedded tokenizer."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread in every test.

    The models here are tiny, so intra-op parallelism buys nothing; and `make test` runs two
    pytest-xdist workers on two cores, where each worker's thread pool would oversubscribe the
    cores and slow every forward pass many times over.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from transformers import AutoTokenizer, OlmoeConfig, OlmoeForCausalLM

    from bh_routing.embedded import EMBEDDED_MODEL_DIR

    path = tmp_path_factory.mktemp("tiny-olmoe")
    tok = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)
    torch.manual_seed(0)
    cfg = OlmoeConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, num_experts=16, num_experts_per_tok=4, norm_topk_prob=False,
        max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = OlmoeForCausalLM(cfg)
    with torch.no_grad():  # make some experts stand out so variable k has something to choose
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(torch.linspace(0.2, 4.0, 16)[:, None] * 8)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def small_config(tiny_model_dir):
    from bh_routing.study import RunConfig

    return RunConfig(
        model=str(tiny_model_dir), alphas=[0.05, 0.3], alpha=0.05, temperatures=[0.5, 1.0, 2.0],
        topp_values=[0.5, 0.9], ratio_values=[0.5, 0.1], seq_len=32, eval_sequences=4, calib_sequences=8,
        reservoir_size=256, new_tokens=4, seed=1,
    )
