"""The loss over the vocabulary in chunks equals the full loss; the batch cap splits forward passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bh_routing.analysis.evaluate import sequence_nll
from bh_routing.models.device import NonFiniteError
from bh_routing.models.memory import batch_cap, set_batch_cap


@pytest.fixture
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def _full(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none").sum(1).double()


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_chunked_loss_equals_the_full_loss(model, chunk):
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 40))
    nll, predicted = sequence_nll(model, ids, chunk_tokens=chunk)
    assert predicted == 39
    # float32 logits either way; chunks only change the matmul's blocking: rounding of float32
    torch.testing.assert_close(nll, _full(model, ids), rtol=1e-6, atol=1e-4)


def test_batch_cap_gives_the_same_loss_and_outputs(model):
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (5, 16))
    whole = sequence_nll(model, ids)[0]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    set_batch_cap(model, 2)
    assert batch_cap(model) == 2
    torch.testing.assert_close(sequence_nll(model, ids)[0], whole, rtol=1e-6, atol=1e-4)
    calls = []
    handle = model.model.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape[0]), with_kwargs=True)
    with torch.no_grad():
        out = model(input_ids=ids)
    handle.remove()
    assert calls == [2, 2, 1] and out.past_key_values is None
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
    set_batch_cap(model, None)
    assert batch_cap(model) is None


def test_inf_loss_is_refused_not_reported(model):
    with torch.no_grad():
        model.lm_head.weight[0].fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"^the loss and hidden states hold inf/NaN in float32; the run stops"):
        sequence_nll(model, torch.arange(2, 10)[None])
