"""The embedded tiny OLMoE: loads offline from the package, has OLMoE's routing, and is trained."""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bh_routing.embedded import (  # noqa: E402
    EMBEDDED_MODEL_DIR,
    EVAL_DOMAINS,
    default_eval_text,
    default_eval_texts,
)


@pytest.fixture(scope="module")
def offline():
    """Hub access switched off while the module's fixtures load the model (it must come from disk)."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def model(offline):
    m = transformers.AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR, dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def tokenizer(offline):
    return transformers.AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)


@pytest.fixture(scope="module")
def eval_ids(tokenizer):
    """Token ids of the first 512 + 1 held-out tokens of each domain."""
    texts = default_eval_texts()
    return {d: torch.tensor(tokenizer(texts[d][:8000])["input_ids"][:513]) for d in EVAL_DOMAINS}


def test_model_dir_holds_a_complete_checkpoint():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (EMBEDDED_MODEL_DIR / name).is_file(), name


def test_shipped_weights_are_small():
    size = sum(f.stat().st_size for f in EMBEDDED_MODEL_DIR.glob("*.safetensors"))
    assert 0 < size < 25e6


def test_model_has_olmoe_routing(model):
    assert isinstance(model, transformers.OlmoeForCausalLM)
    cfg = model.config
    assert cfg.model_type == "olmoe"
    assert cfg.num_experts == 64
    assert cfg.num_experts_per_tok == 8
    assert cfg.norm_topk_prob is False
    assert cfg.router_aux_loss_coef == 0.01


def test_tokenizer_loads_as_fast_tokenizer(tokenizer, model):
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
    assert len(tokenizer) == model.config.vocab_size == 4096
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    ids = tokenizer("def f(x):\n    return x\n")["input_ids"]
    assert tokenizer.decode(ids) == "def f(x):\n    return x\n"


def test_eval_texts_have_both_domains():
    texts = default_eval_texts()
    assert tuple(texts) == ("prose", "code")
    assert all(len(t) > 10_000 for t in texts.values())
    assert "def " in texts["code"] and "import " in texts["code"]
    assert ".. " in texts["prose"]  # reStructuredText directives
    whole = default_eval_text()
    assert texts["prose"] in whole and texts["code"] in whole
    assert "<<<bh-routing-eval-domain" not in whole


@pytest.mark.parametrize("domain", EVAL_DOMAINS)
def test_held_out_loss_beats_unigram_entropy(model, tokenizer, eval_ids, domain):
    """Loss on 512 held-out tokens is below the plug-in unigram entropy of the whole held-out text.

    The plug-in entropy of the held-out tokens' own frequencies is a lower bound on the
    cross-entropy of any unigram model on them, so beating it needs context.
    """
    ids = eval_ids[domain]
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=ids[None]).loss.item()
    all_ids = torch.tensor(tokenizer(default_eval_texts()[domain])["input_ids"])
    freq = torch.bincount(all_ids, minlength=model.config.vocab_size).double()
    freq = freq[freq > 0] / freq.sum()
    unigram_entropy = float(-(freq * freq.log()).sum())
    assert loss < unigram_entropy - 0.5
    assert loss < math.log(model.config.vocab_size) - 2.0


def test_routers_are_trained_not_uniform(model, eval_ids):
    ids = torch.cat([eval_ids[d] for d in EVAL_DOMAINS])[None]
    with torch.no_grad():
        out = model(input_ids=ids, output_router_logits=True)
    assert len(out.router_logits) == model.config.num_hidden_layers
    for logits in out.router_logits:  # (T, E)
        assert logits.shape[-1] == 64
        p = torch.softmax(logits.double(), dim=-1)
        entropy = float(-(p * p.log()).sum(-1).mean())
        assert entropy < math.log(64) - 0.5


def test_default_forward_does_not_add_aux_loss(model, eval_ids):
    """The shipped config has output_router_logits=False: plain forward returns the LM loss only."""
    assert model.config.output_router_logits is False
    ids = eval_ids["prose"][None, :64]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.aux_loss is None
