"""load_model: a local folder round trip, and a one-line ModelLoadError for each failure."""

import pytest
import torch
import transformers
from moe_tiny import tiny_model

from bh_routing.models import ModelLoadError, inspect_model, load_model
from bh_routing.models import loading


def _save_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"w{i}": i for i in range(3, 64)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def saved_olmoe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-olmoe")
    model = tiny_model("olmoe")
    model.save_pretrained(folder)
    _save_tokenizer(folder)
    return folder, model


def test_local_folder_round_trip(saved_olmoe):
    folder, original = saved_olmoe
    model, tokenizer = load_model(folder, device="cpu")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert tokenizer("w3 w4").input_ids == [3, 4]
    x = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, original(x).logits)
    model, _ = load_model(str(folder), device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found: .*/nope") as e:
        load_model(tmp_path / "nope")
    _one_line(e)
    with pytest.raises(ModelLoadError, match=r"not a model folder \(no config.json\)"):
        load_model(tmp_path)


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"cannot load 'nobody/no-such-moe': the Hugging Face Hub cannot be reached \(offline or no network\)") as e:
        load_model("nobody/no-such-moe", device="cpu")
    _one_line(e)


def test_hub_id_without_network_fails_at_once(monkeypatch):
    """No HF_HUB_OFFLINE, but the Hub's host refuses connections: the cache is used, nothing retries."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    from bh_routing.models import loading

    import transformers

    assert loading._hub_unreachable()
    seen = {}
    real = transformers.AutoConfig.from_pretrained

    def spy(source, **kwargs):
        seen.update(kwargs)
        return real(source, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    with pytest.raises(ModelLoadError, match=r"cannot load 'nobody/no-such-moe': the Hugging Face Hub cannot be reached"):
        load_model("nobody/no-such-moe", device="cpu")
    assert seen["local_files_only"] is True  # the cache only: no request, so no retries


def test_not_enough_memory(saved_olmoe, monkeypatch):
    monkeypatch.setattr(loading, "available_memory", lambda device: 1000)
    with pytest.raises(ModelLoadError, match=r"not enough memory to load .* in float32 on cpu: needs about 0\.0 GiB, 0\.0 GiB available") as e:
        load_model(saved_olmoe[0], device="cpu")
    _one_line(e)


def test_non_moe_model(tmp_path):
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)
    cfg.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"is not a supported MoE model: model type 'llama' is not a supported MoE family \(available: deepseek_v3, gpt_oss, mixtral, olmoe, qwen2_moe, qwen3_moe\)") as e:
        load_model(tmp_path, device="cpu")
    _one_line(e)


def test_embedded_model_not_built(tmp_path, monkeypatch):
    import bh_routing.embedded as embedded

    monkeypatch.setattr(embedded, "EMBEDDED_MODEL_DIR", tmp_path / "olmoe-tiny")
    with pytest.raises(ModelLoadError, match=r"the embedded model is not built: .*olmoe-tiny has no config.json"):
        load_model()


def test_embedded_model_loads_when_built():
    import bh_routing.embedded as embedded

    if not (embedded.EMBEDDED_MODEL_DIR / "config.json").is_file():
        pytest.skip("the embedded model is not built yet")
    model, tokenizer = load_model(device="cpu")
    assert inspect_model(model).family == "olmoe" and not model.training
    assert len(tokenizer("def f(x): return x").input_ids) > 0


def test_bad_dtype_and_device(saved_olmoe):
    with pytest.raises(ModelLoadError, match=r"dtype must be a torch.dtype or one of .*got 'int8'"):
        load_model(saved_olmoe[0], device="cpu", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="device 'cuda' asked for, but no CUDA device is available"):
            load_model(saved_olmoe[0], device="cuda")
