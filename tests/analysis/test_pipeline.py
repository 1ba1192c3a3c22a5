"""A whole run on a tiny model: every output, numbers that agree, resume, determinism."""

import csv
import json

import numpy as np
import pytest

from bh_routing import RunConfig, Study, run
from bh_routing.analysis import experiments
from bh_routing.report import COMPARATIVE_CSV, REPORT_MD, fmt
from bh_routing.study.results import RESULTS_JSON
from bh_routing.report.figures import SEED_FIGURES

ELEVEN = {RESULTS_JSON, COMPARATIVE_CSV, REPORT_MD, *SEED_FIGURES}


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):

    cfg = RunConfig(
        model=str(tiny_model_dir), alphas=[0.05, 0.3], alpha=0.05, temperatures=[0.5, 1.0, 2.0],
        topp_values=[0.5, 0.9], ratio_values=[0.5, 0.1], seq_len=32, eval_sequences=4, calib_sequences=8,
        reservoir_size=256, new_tokens=4, seed=1,
    )
    out = tmp_path_factory.mktemp("run")
    return cfg, out, run(cfg, out)


def test_writes_the_eleven_files(finished):
    _, out, _ = finished
    names = {p.name for p in out.iterdir()}
    assert ELEVEN <= names
    assert not [n for n in names if n.endswith(".tmp") or n.endswith(".tmp.png")]
    from PIL import Image

    for fig in SEED_FIGURES:
        with Image.open(out / fig) as im:
            assert im.info["dpi"][0] == pytest.approx(150, abs=1)


def test_numbers_agree_across_json_csv_and_markdown(finished):
    _, out, _ = finished
    res = json.loads((out / RESULTS_JSON).read_text())
    md = (out / REPORT_MD).read_text()
    rows = list(csv.DictReader((out / COMPARATIVE_CSV).open()))
    comp = res["steps"]["comparative"]
    assert [r["prompt_label"] for r in rows] == [c["prompt_label"] for c in comp]
    for r, c in zip(rows, comp):
        for key in ("topk_mean_experts", "bh_mean_experts", "expert_reduction_pct", "topk_loss", "bh_loss", "loss_change"):
            assert float(r[key]) == c[key]
            assert fmt(c[key]) in md
    st = res["derived"]["statistics"]
    for number in (st["experts"]["mean_a"], st["expert_reduction_pct"]["mean"], st["ppl_bh"]["ppl"], st["ppl_topk"]["ppl"]):
        assert fmt(number) in md
    for row in res["derived"]["alpha_sensitivity"] + res["derived"]["frontier"]:
        assert fmt(row["mean_k"]) in md and fmt(row["ppl"]) in md
    assert st["documents"]["verdict"] in md


def test_results_hold_config_versions_and_seed(finished):
    cfg, out, res = finished
    assert res["config"]["seed"] == 1 and res["config"]["model"] == cfg.model
    assert {"torch", "transformers", "bh_routing", "python"} <= set(res["environment"])
    seconds = res["environment"]["step_seconds"]  # where the run's time went: every step it computed
    assert set(seconds) == set(res["steps"]) and all(s >= 0 for s in seconds.values())
    slowest = max(seconds, key=seconds.get)
    assert f"{slowest} {fmt(seconds[slowest])} s" in (out / REPORT_MD).read_text()
    assert res["model"]["top_k"] == 4 and res["model"]["num_experts"] == 16


def test_bh_saves_experts_and_topk_reference_is_the_model(finished):
    _, _, res = finished
    alpha = {(r["family"], r["param"]): r for r in res["derived"]["alpha_sensitivity"]}
    assert alpha[("bh-calibrated", 0.05)]["mean_k"] < 4
    topk = {r["param"]: r for r in res["derived"]["frontier"] if r["family"] == "topk"}
    assert [topk[k]["mean_k"] for k in (1, 2, 3, 4)] == [1, 2, 3, 4]
    # the paired ratio to top-4, recomputed here from the saved per-window losses and document ids
    docs = res["evaluation"]["window_documents"]
    runs = {r["label"]: r for r in res["steps"]["frontier"] + res["steps"]["alpha"]}

    def doc_loss(run):
        per = {}
        for d, nll, t in zip(docs, run["seq_nll"], run["seq_tokens"]):
            per.setdefault(d, [0.0, 0])
            per[d][0] += nll
            per[d][1] += t
        return np.array([a / b for a, b in per.values()])

    ref = doc_loss(runs["TopK(k=4)"])
    for row in res["derived"]["frontier"] + res["derived"]["alpha_sensitivity"]:
        diff = doc_loss(runs[row["label"]]) - ref
        assert row["ppl_ratio"] == pytest.approx(np.exp(diff.mean()))
        assert row["ppl"] == pytest.approx(np.exp(doc_loss(runs[row["label"]]).mean()))
    assert topk[4]["ppl_ratio"] == 1.0  # the reference against itself (on a random model top-1 need not be worse)
    # the scale-free empirical null is not swept over temperatures (it has no effect: tests/core);
    # the calibrated null is, and a lower temperature gives more experts
    assert not [r for r in res["derived"]["temperature_sensitivity"] if r["family"] == "bh-empirical"]
    temp = [r for r in res["derived"]["temperature_sensitivity"] if r["family"] == "bh-calibrated"]
    assert temp[0]["mean_k"] > temp[-1]["mean_k"]


def test_resume_reuses_finished_steps_and_same_seed_same_numbers(finished, monkeypatch, tmp_path):
    cfg, out, first = finished

    def boom(*a, **k):
        raise AssertionError("a finished step was recomputed")

    for name in ("alpha_sweep", "temperature_sweep", "baseline_frontier", "comparative", "token_level", "baseline_inference", "fit_calibration"):
        monkeypatch.setattr(experiments, name, boom)
    again = run(cfg, out)
    assert again["derived"] == first["derived"] and again["steps"] == first["steps"]
    monkeypatch.undo()
    # a fresh folder with the same seed reproduces every number
    fresh = Study(cfg, tmp_path / "b")
    fresh.run()
    assert fresh.results["steps"] == first["steps"] and fresh.results["derived"] == first["derived"]


def test_study_runs_single_steps(small_config, tmp_path):
    study = Study(small_config, tmp_path / "s")
    res = study.run("alpha")
    assert "alpha_sensitivity" in res["derived"] and "frontier" not in res["steps"]
    assert study.figure("alpha_sensitivity.png").is_file()
    with pytest.raises(ValueError, match="unknown steps"):
        study.run("alphas")


def test_fdr_oracle_step_figure_and_section(finished):
    _, out, res = finished
    step = res["steps"]["fdr_oracle"]
    md = (out / REPORT_MD).read_text()
    assert (out / "fdr_oracle.png").is_file() and "![fdr_oracle](fdr_oracle.png)" in md
    assert [r["alpha"] for r in step["bh"]] == [0.05, 0.3] * (len(step["bh"]) // 2)  # each variant at every α
    for row in step["bh"]:
        assert fmt(row["fdp"]["mean"]) in md and row["verdict"] in md


def test_documents_are_the_units_and_too_few_give_no_verdict(finished):
    """Four evaluation documents (one window each), calibration on other documents; matched comparisons
    carry raw and Holm-adjusted p-values, and with 4 < 20 documents nothing is called significant."""
    _, out, res = finished
    ev = res["evaluation"]
    assert ev["documents"] == ev["sequences"] == 4 and ev["unit"] == "document"
    assert ev["calibration"]["sequences"] == 8 and not set(ev["window_documents"]) & set(ev["calibration"]["window_documents"])
    m = res["derived"]["matched"]
    assert m["correction"] == "holm" and m["primary"] is not None and m["primary"]["primary"]
    tested = [r["comparison"] for r in m["grid"] if r["comparison"] is not None]
    assert tested and m["family_size"] == len(tested)
    for c in tested:
        assert {"t_pvalue", "p_adjusted", "correction"} <= set(c) and c["correction"] == "holm"
        assert c["p_adjusted"] >= c["t_pvalue"] and c["n"] == 4 and c["decision"] == "too few documents"
    assert {r["word"] for r in m["grid"]} <= {"no verdict", "outside"}
    for t in res["steps"]["matched"]["targets"]:
        if t["matched"]:
            assert abs(t["calibration_k"] - t["target_k"]) <= res["steps"]["matched"]["tolerance"]
    md = (out / REPORT_MD).read_text()
    assert "## Matched comparisons" in md and "too few documents for a verdict" in md
    section = md.split("## Matched comparisons")[1].split("\n## ")[0]
    findings = [line for line in section.splitlines() if line.startswith(("- ", "| "))]
    assert findings and not any("significantly" in line or "| wins |" in line or "| loses |" in line for line in findings)


def test_export_returns_the_report_and_the_files_of_the_finished_steps(finished, tmp_path):
    cfg, out, _ = finished
    study = Study(cfg, tmp_path / "again")
    study.run("alpha")  # needs the calibration step, which writes calibration.safetensors
    names = [p.name for p in study.export()]
    assert names[0] == RESULTS_JSON and REPORT_MD in names and "alpha_sensitivity.png" in names
    assert "calibration.safetensors" in names and "certificate.json" not in names  # certify did not run
    assert all((tmp_path / "again" / n).is_file() for n in names)
