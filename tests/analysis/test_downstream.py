"""Downstream evaluation through lm-evaluation-harness: offline tasks, paired tests, shards, CLI, report.

A tiny random OLMoE (2 MoE layers x 16 experts, top-4) with the embedded model's tokenizer (or, where
the embedded model is not built, a byte-level BPE trained here on the shipped task texts) runs the
two shipped offline tasks on a few documents each.
"""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is in the 'eval' and 'test' extras")
pytest.importorskip("accelerate", reason="lm-eval's HFLM needs accelerate")

from bh_routing.analysis.downstream import (  # noqa: E402
    LOCAL_TASKS,
    DownstreamError,
    evaluate_downstream,
    mcnemar_exact,
    merge_downstream,
)
from bh_routing.cli import app  # noqa: E402
from bh_routing.core import BH, TopK  # noqa: E402
from bh_routing.core.strategies import PVALUE_METHODS  # noqa: E402
from bh_routing.models import load_model, patched  # noqa: E402

runner = CliRunner()
LIMIT = 6
GROUP_YAML = """group: bhr_mc_group
task:
  - bhr_python_mc
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
  - metric: acc_norm
    weight_by_size: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir):
    return tiny_model_dir  # the tiny random OLMoE of conftest.py, with the embedded tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def group_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks")
    (path / "bhr_mc_group.yaml").write_text(GROUP_YAML)
    return path


STRATEGIES = {"topk": TopK(4), "bh-0.05": BH(0.05)}
TASKS = ["bhr_mc_group", "bhr_heldout_rolling"]


@pytest.fixture(scope="module")
def full(tiny, group_dir):
    model, tok = tiny
    return evaluate_downstream(model, tok, STRATEGIES, TASKS, include_path=group_dir, limit=LIMIT, seed=3)


# ---------------------------------------------------------------------------------- Python API
def test_topk_and_bh_offline_from_python(full):
    json.dumps(full, allow_nan=False)  # JSON-able as it is
    assert set(full["tasks"]) == set(LOCAL_TASKS) and full["baseline"] == "topk"
    mc, roll = full["tasks"]["bhr_python_mc"], full["tasks"]["bhr_heldout_rolling"]
    assert mc["output_type"] == "multiple_choice" and mc["group"] == "bhr_mc_group" and mc["n"] == LIMIT
    assert roll["output_type"] == "loglikelihood_rolling" and roll["group"] is None
    for s in STRATEGIES:
        m = mc["strategies"][s]["metrics"]
        assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(m) and 0 <= m["acc"] <= 1
        assert mc["strategies"][s]["samples"]["doc_id"] == list(range(LIMIT))
        assert set(roll["strategies"][s]["metrics"]) >= {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    # top-k routes exactly the model's k; BH fewer on these spread-out routers
    for t in (mc, roll):
        assert t["strategies"]["topk"]["mean_experts_per_token"] == 4.0
        assert 1.0 <= t["strategies"]["bh-0.05"]["mean_experts_per_token"] < 4.0
        assert t["strategies"]["bh-0.05"]["routed_tokens"] > 0
    # per-document results reproduce lm-eval's own aggregates
    for s in STRATEGIES:
        m, smp = mc["strategies"][s]["metrics"], mc["strategies"][s]["samples"]
        assert m["acc"] == pytest.approx(np.mean(smp["acc"]))
        assert m["acc_stderr"] == pytest.approx(np.std(smp["acc"], ddof=1) / math.sqrt(LIMIT))
        r, rs = roll["strategies"][s]["metrics"], roll["strategies"][s]["samples"]
        assert r["bits_per_byte"] == pytest.approx(-sum(rs["loglikelihood"]) / sum(rs["bytes"]) / math.log(2))
        assert r["word_perplexity"] == pytest.approx(math.exp(-sum(rs["loglikelihood"]) / sum(rs["words"])))


def test_paired_statistics(full):
    mc = full["tasks"]["bhr_python_mc"]
    tests = {t["metric"]: t for t in mc["paired"]}
    assert set(tests) == {"acc", "acc_norm"}
    a, b = (np.array(mc["strategies"][s]["samples"]["acc"]) for s in ("bh-0.05", "topk"))
    t = tests["acc"]
    assert (t["a"], t["b"], t["test"], t["n"]) == ("bh-0.05", "topk", "mcnemar_exact", LIMIT)
    assert (t["only_a"], t["only_b"]) == (int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum()))
    assert "bhr_python_mc, acc" in t["verdict"]
    (rt,) = full["tasks"]["bhr_heldout_rolling"]["paired"]
    ll = [np.array(full["tasks"]["bhr_heldout_rolling"]["strategies"][s]["samples"]["loglikelihood"]) for s in ("bh-0.05", "topk")]
    assert rt["test"] == "paired_t_wilcoxon" and rt["t_pvalue"] == pytest.approx(stats.ttest_rel(*ll).pvalue)
    (gt_acc, gt_norm) = full["groups"]["bhr_mc_group"]["paired"]
    assert gt_acc["n"] == LIMIT and gt_acc["pvalue"] == t["pvalue"]
    # one family per result: every test Holm-adjusted together, the raw p kept beside
    from bh_routing.analysis.stats import holm

    family = [x for part in (full["tasks"], full["groups"]) for v in part.values() for x in v["paired"]]
    raw = [x["pvalue"] if x["test"] == "mcnemar_exact" else x["t_pvalue"] for x in family]
    assert [x["p_adjusted"] for x in family] == pytest.approx(list(holm(raw)))
    assert {x["correction"] for x in family} == {"holm"} and rt["verdict"].startswith("bhr_heldout_rolling: ")


def test_mcnemar_exact_against_scipy():
    a = np.array([1] * 12 + [0] * 1 + [1] * 5 + [0] * 2)
    b = np.array([0] * 12 + [1] * 1 + [1] * 5 + [0] * 2)
    t = mcnemar_exact(a, b, names=("bh", "topk"), metric="acc", task="demo")
    assert (t["only_a"], t["only_b"]) == (12, 1)
    assert t["pvalue"] == pytest.approx(stats.binomtest(12, 13, 0.5).pvalue) and t["significant"]
    assert "bh is significantly more accurate than topk" in t["verdict"]
    ci = stats.binomtest(12, 13).proportion_ci(method="exact")
    assert (t["share_a"], t["share_ci_low"], t["share_ci_high"]) == pytest.approx((12 / 13, ci.low, ci.high))
    assert t["share_ci_low"] > 0.5
    t = mcnemar_exact(b, a, names=("bh", "topk"), metric="acc", task="demo")
    assert t["significant"] and "significantly less accurate" in t["verdict"]
    # the one verdict rule: 14 documents are too few for a verdict, however small p is
    t = mcnemar_exact(a[:14], b[:14], names=("bh", "topk"), metric="acc", task="demo")
    assert t["pvalue"] < 0.01 and not t["significant"] and "too few documents for a verdict" in t["verdict"]
    t = mcnemar_exact(np.array([1, 0, 1, 0] * 5), np.array([0, 1, 1, 0] * 5), names=("bh", "topk"), metric="acc", task="demo")
    assert t["pvalue"] == 1.0 and not t["significant"] and "no significant difference between bh and topk at 0.05 (" in t["verdict"]
    t = mcnemar_exact(np.array([1] * 4 + [0] * 38), np.array([0] * 42), names=("bh", "topk"), metric="acc", task="demo")
    assert t["pvalue"] == pytest.approx(0.125) and t["share_ci_low"] < 0.5  # 4 vs 0: the CI agrees with the test
    assert "they differ on 4 of 42 documents, 4 in favour of bh, 0 of topk" in t["verdict"]
    t = mcnemar_exact(np.array([1, 0]), np.array([1, 0]), names=("bh", "topk"), metric="acc", task="demo")
    assert "exactly the same 2 documents" in t["verdict"] and not t["significant"]


def test_shards_merge_into_the_whole_run(tiny, group_dir, full):
    model, tok = tiny
    parts = [evaluate_downstream(model, tok, STRATEGIES, TASKS, include_path=group_dir, limit=LIMIT, seed=3, shard=(r, 2))
             for r in (1, 0)]
    assert parts[0]["tasks"]["bhr_python_mc"]["strategies"]["topk"]["samples"]["doc_id"] == [1, 3, 5]
    merged = merge_downstream(parts)
    for name, t in full["tasks"].items():
        for s in STRATEGIES:
            got, want = merged["tasks"][name]["strategies"][s], t["strategies"][s]
            assert set(got["samples"]) == set(want["samples"])
            for field, values in want["samples"].items():
                assert got["samples"][field] == pytest.approx(values), (name, s, field)
            for k, v in want["metrics"].items():
                assert got["metrics"][k] == pytest.approx(v), (name, s, k)
            assert got["mean_experts_per_token"] == pytest.approx(want["mean_experts_per_token"])
    for s in STRATEGIES:
        want = full["groups"]["bhr_mc_group"]["strategies"][s]["metrics"]
        assert merged["groups"]["bhr_mc_group"]["strategies"][s]["metrics"] == pytest.approx(want)
    assert [p["pvalue"] for p in merged["tasks"]["bhr_python_mc"]["paired"]] == \
        pytest.approx([p["pvalue"] for p in full["tasks"]["bhr_python_mc"]["paired"]])
    with pytest.raises(ValueError, match="one part per rank"):
        merge_downstream(parts[:1])


def test_python_bad_input(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(DownstreamError, match=r"include path not found: .*nope"):
        evaluate_downstream(model, tok, STRATEGIES, list(LOCAL_TASKS), include_path=tmp_path / "nope")
    with pytest.raises(DownstreamError, match="strategies must be a non-empty mapping"):
        evaluate_downstream(model, tok, {}, list(LOCAL_TASKS))
    with pytest.raises(DownstreamError, match="shard must be"):
        evaluate_downstream(model, tok, STRATEGIES, list(LOCAL_TASKS), shard=(2, 2))
    with pytest.raises(DownstreamError, match="limit must be a number > 0"):
        evaluate_downstream(model, tok, STRATEGIES, list(LOCAL_TASKS), limit=0)


def test_report_section_with_groups(full):
    from bh_routing.report.downstream import markdown

    md = markdown({"steps": {"downstream": full}, "model": {"name": "tiny"}})
    assert md.startswith("## Downstream evaluation (lm-evaluation-harness)")
    assert "### bhr_mc_group (group of bhr_python_mc; n = 6)" in md
    assert "### bhr_heldout_rolling (loglikelihood_rolling; n = 6)" in md
    assert "### bhr_python_mc" not in md  # shown through its group
    assert "| topk (baseline) | 4 |" in md and "**limit 6 documents per task**" in md
    assert md.count("- no verdict: ") >= 3 and "too few documents for a verdict" in md  # 6 documents per task


# ----------------------------------------------------------------------------------------- CLI
def _fail(args, message, out):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert not out.exists(), "a failed command wrote its output folder"


def test_cli_writes_report_and_adds_to_a_run(tiny_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "run"
    result = runner.invoke(app, ["lm-eval", "-m", str(tiny_dir), "--device", "cpu", "--limit", "4",
                                 "--alpha", "0.05,0.3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}/" in result.stdout and "bhr_python_mc: topk acc" in result.stdout
    res = json.loads((out / "bh_routing_results.json").read_text())
    ds = res["steps"]["downstream"]
    assert list(ds["strategies"]) == ["topk", "bh-empirical-0.05", "bh-empirical-0.3"]
    assert set(ds["tasks"]) == set(LOCAL_TASKS) and ds["limit"] == 4
    assert res["model"]["name"] == str(tiny_dir) and res["eval_domains"] == [] and res["derived"] == {}
    assert len(ds["tasks"]["bhr_python_mc"]["paired"]) == 4  # 2 BH levels x (acc, acc_norm)
    md = (out / "RESULTS.md").read_text()
    assert "## Downstream evaluation (lm-evaluation-harness)" in md and "![downstream](downstream_accuracy.png)" in md
    png = Image.open(out / "downstream_accuracy.png")
    assert png.info["dpi"] == pytest.approx((150, 150), abs=0.5)

    # a second run on the same folder keeps the rest of the results and replaces the step
    res["config"]["kept_marker"] = "yes"
    (out / "bh_routing_results.json").write_text(json.dumps(res))
    result = runner.invoke(app, ["lm-eval", "-m", str(tiny_dir), "--device", "cpu", "--limit", "2",
                                 "--tasks", "bhr_python_mc", "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "bh_routing_results.json").read_text())
    assert again["config"]["kept_marker"] == "yes"
    assert list(again["steps"]["downstream"]["tasks"]) == ["bhr_python_mc"]

    # ... but not one of another model
    again["model"]["name"] = "another-model"
    text = json.dumps(again)
    (out / "bh_routing_results.json").write_text(text)
    result = runner.invoke(app, ["lm-eval", "-m", str(tiny_dir), "--limit", "2", "--out", str(out)])
    assert result.exit_code == 2 and "holds results of 'another-model'" in result.stderr
    assert (out / "bh_routing_results.json").read_text() == text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "bhr_python_mcq"], "unknown lm-eval task 'bhr_python_mcq' (did you mean bhr_python_mc"),
        (["--include-path", "/no/such/folder"], "include path not found: /no/such/folder"),
        (["--alpha", "1.5"], "alpha must be in (0, 1], got 1.5"),
        (["--alpha", "0.05,abc"], "alpha must be a comma-separated list of numbers, got '0.05,abc'"),
        (["--pvalues", "bayes"], f"pvalues must be one of {PVALUE_METHODS}, got 'bayes'"),
        (["--limit", "0"], "limit must be a number > 0 (a count, or a fraction below 1), got 0.0"),
        (["--shard", "2/2"], "shard must be RANK/WORLD with 0 <= RANK < WORLD"),
    ],
)
def test_cli_bad_input(tiny_dir, tmp_path, extra, message):
    out = tmp_path / "o"
    _fail(["lm-eval", "-m", str(tiny_dir), "--out", str(out), *extra], message, out)


# --------------------------------------------------------------------------- models split by device_map
DEVICE_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
              "model.norm": "cpu", "lm_head": "cpu"}


def _dispatched(tiny_dir):
    """accelerate's dispatch as for a multi-GPU ``device_map``: a device hook on every block (here all on CPU)."""
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return dispatch_model(model, device_map=DEVICE_MAP, force_hooks=True)


def _offloaded(tiny_dir, tmp_path):
    """Layer 1 offloaded to disk (weights on the meta device, loaded by accelerate's hook at each call)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        tiny_dir, device_map={**DEVICE_MAP, "model.layers.1": "disk"}, offload_folder=str(tmp_path / "off"),
        dtype=torch.float32,
    ).eval()


def _check_every_layer_patched(model, reference):
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    for strategy in (TopK(4), BH(0.05)):
        with torch.no_grad(), patched(reference, strategy) as ref_rec:
            want = reference(ids).logits
        with torch.no_grad(), patched(model, strategy) as rec:
            got = model(ids).logits
        k = rec.mean_k_per_layer()
        assert len(k) == 2 and not torch.isnan(k).any()  # both MoE layers routed through the strategy
        assert torch.equal(k, ref_rec.mean_k_per_layer())
        torch.testing.assert_close(got, want)


def test_patching_a_model_dispatched_with_a_device_map(tiny_dir, tiny):
    model = _dispatched(tiny_dir)
    assert model.hf_device_map == DEVICE_MAP
    assert all(hasattr(layer, "_hf_hook") for layer in model.model.layers)
    _check_every_layer_patched(model, tiny[0])


def test_patching_a_model_with_an_offloaded_layer(tiny_dir, tiny, tmp_path):
    model = _offloaded(tiny_dir, tmp_path)
    assert model.model.layers[1].mlp.gate.weight.device.type == "meta"
    _check_every_layer_patched(model, tiny[0])
