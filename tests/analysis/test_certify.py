"""Certified routing on the embedded model: the guarantee over random calibration/test splits, the
naive rule that breaks it, the certificate's contents, certified_strategy and bad inputs.

The per-sequence risks of a pool of short sequences are computed once per test session (one
unpatched pass + one patched pass per grid point) and every split reuses them.
"""

import json

import numpy as np
import pytest
import torch

import bh_routing
from bh_routing.analysis import certify as C
from bh_routing.analysis.data import chunk_text, interleave_domains
from bh_routing.core import TopK, WeightRatio
from bh_routing.core.risk_control import hb_pvalue
from bh_routing.embedded import default_eval_texts
from bh_routing.models import load_model

POOL, SEQ_LEN = 200, 32


@pytest.fixture(scope="session")
def embedded():
    torch.set_num_threads(1)
    return load_model(None)


@pytest.fixture(scope="session")
def pool(embedded):
    """(200, 32) windows spread over both domains' documents (every 10th of the interleaved chunks)."""
    _, tok = embedded
    chunks = {k: chunk_text(tok, v, seq_len=SEQ_LEN) for k, v in default_eval_texts().items()}
    seqs, _ = interleave_domains(chunks)
    return seqs[:: len(seqs) // POOL][:POOL]


@pytest.fixture(scope="session")
def pool_risks(embedded, pool):
    """Per-sequence risks of top-k (k = 8..1) and weight-ratio (5 β) on the pool: 14 passes."""
    model, _ = embedded
    grid = [p for p in C.default_grid(8, families=("topk",))]
    grid += [C.GridPoint("weight_ratio", b, f"WeightRatio(β={b:g})", WeightRatio(b)) for b in (0.02, 0.05, 0.1, 0.2, 0.3)]
    table = C.measure_risks(model, pool, grid, batch_size=50)
    return table.per_sequence(), table.points


def test_pool_risks_are_sane(pool_risks):
    per_seq, points = pool_risks
    top1 = np.asarray(per_seq["top1"])  # (13, 200)
    assert top1.shape == (13, POOL)
    assert points[0]["label"] == "TopK(k=8)" and points[0]["mean_k"] == 8.0
    assert top1[0].max() == 0.0  # the model's own routing, patched, agrees with itself
    k_means = top1[:8].mean(axis=1)
    assert np.all(np.diff(k_means) > 0)  # fewer experts, more disagreement
    assert 0.2 < k_means[-1] < 0.8  # k = 1 changes a real share of greedy tokens


@pytest.mark.parametrize("epsilon", [0.1, 0.15, 0.2])
def test_guarantee_over_random_splits(pool_risks, epsilon):
    """Share of 400 splits whose chosen setting's test-half risk exceeds ε is ≤ δ (+ tolerance)."""
    per_seq, points = pool_risks
    res = C.split_experiment(per_seq, points, risk="top1", epsilon=epsilon, delta=0.1, n_splits=400, seed=1)
    assert res["n_calibration"] == 100 and res["n_test"] == 100
    assert res["ltt_exceed"] <= res["tolerance"]
    if epsilon >= 0.15:  # non-vacuous: the certificate does cut experts
        assert res["ltt_mean_k"] < 8.0


def test_naive_rule_breaks_the_guarantee(pool_risks):
    """At ε just above a setting's pool risk, "cheapest with empirical risk ≤ ε" exceeds δ; LTT does not."""
    per_seq, points = pool_risks
    top1 = np.asarray(per_seq["top1"])
    j = 2  # TopK(k=6)
    sd_half = top1[j].std(ddof=1) / np.sqrt(POOL // 2)
    epsilon = float(top1[j].mean() + 0.25 * sd_half)
    res = C.split_experiment(per_seq, points, risk="top1", epsilon=epsilon, delta=0.1, n_splits=400, seed=2)
    assert res["naive_exceed"] > res["tolerance"]  # clearly above δ = 0.1
    assert res["ltt_exceed"] <= res["tolerance"]
    assert res["ltt_mean_k"] > res["naive_mean_k"]  # the price of the guarantee


def test_loss_risk_split_and_clip(pool_risks):
    per_seq, points = pool_risks
    res = C.split_experiment(per_seq, points, risk="loss", epsilon=0.05, delta=0.1, n_splits=200, seed=3)
    assert res["ltt_exceed"] <= res["tolerance"]
    cert = C.recertify(per_seq, points, risk="loss", epsilon=0.05, delta=0.1)
    loss = np.asarray(per_seq["loss_delta"])
    for i, point in enumerate(cert["families"]["topk"]["grid"]):
        assert point["clip_high"] == pytest.approx(np.mean(loss[i] > C.LOSS_BOUND))
        assert point["clip_low"] == pytest.approx(np.mean(loss[i] < 0))
        assert point["risk_mean"] == pytest.approx(np.clip(loss[i], 0, C.LOSS_BOUND).mean())


def test_recertify_pvalues_match_the_core(pool_risks):
    per_seq, points = pool_risks
    cert = C.recertify(per_seq, points, risk="top1", epsilon=0.1, delta=0.1)
    assert cert["delta_per_family"] == pytest.approx(0.05)
    top1 = np.asarray(per_seq["top1"])
    for i, point in enumerate(cert["families"]["topk"]["grid"]):
        assert point["p_value"] == pytest.approx(float(hb_pvalue(top1[i].mean(), POOL, 0.1)))
    fam = cert["families"]["topk"]
    certified = [p["certified"] for p in fam["grid"]]
    assert certified == sorted(certified, reverse=True)  # fixed-sequence: a prefix
    assert all(p["p_value"] <= 0.05 for p in fam["grid"][: fam["num_certified"]])
    if fam["num_certified"] < len(fam["grid"]):
        assert fam["grid"][fam["num_certified"]]["p_value"] > 0.05


def test_unmeasured_points_stop_the_sequence(pool_risks):
    per_seq, points = pool_risks
    full = C.recertify(per_seq, points, risk="top1", epsilon=0.2, delta=0.1)
    cut = {**per_seq, "top1": list(per_seq["top1"]), "loss_delta": list(per_seq["loss_delta"])}
    cut["top1"][2] = cut["loss_delta"][2] = None  # TopK(k=6) not measured
    res = C.recertify(cut, points, risk="top1", epsilon=0.2, delta=0.1)
    assert full["families"]["topk"]["num_certified"] > 2
    assert res["families"]["topk"]["num_certified"] == 2
    assert res["families"]["topk"]["grid"][2]["measured"] is False


def test_groups_make_documents_the_unit(pool_risks):
    per_seq, points = pool_risks
    groups = [i // 2 for i in range(POOL)]  # 100 "documents" of 2 sequences
    res = C.recertify({**per_seq, "groups": groups}, points, risk="top1", epsilon=0.1, delta=0.1)
    assert res["n_units"] == 100
    top1 = np.asarray(per_seq["top1"])
    doc_means = top1[1].reshape(100, 2).mean(axis=1)
    assert res["families"]["topk"]["grid"][1]["p_value"] == pytest.approx(float(hb_pvalue(doc_means.mean(), 100, 0.1)))


def test_too_few_sequences_message(pool_risks):
    per_seq, points = pool_risks
    small = {k: (np.asarray(v)[:, :28].tolist() if k != "groups" else None) for k, v in per_seq.items()}
    with pytest.raises(C.CertificateError, match=r"too few calibration sequences to certify: got 28, need at least 29 "
                       r"for epsilon=0.1, delta=0.1 over 2 families \(delta/2 each\)"):
        C.recertify(small, points, risk="top1", epsilon=0.1, delta=0.1)  # 0.9^29 <= 0.1/2 < 0.9^28
    assert C.recertify({**small, "top1": np.asarray(per_seq["top1"])[:, :29].tolist(),
                        "loss_delta": np.asarray(per_seq["loss_delta"])[:, :29].tolist()},
                       points, risk="top1", epsilon=0.1, delta=0.1)["n_units"] == 29


def test_too_few_documents_certify_nothing_and_say_why(pool_risks):
    """infeasible_ok: 20 documents of 10 windows cannot support ε = 0.1 at δ/2 (29 needed): nothing is
    certified, the reason is given, and each point keeps its document-level risk, p-value and bound."""
    from bh_routing.core.risk_control import hb_upper_bound

    per_seq, points = pool_risks
    groups = [i // 10 for i in range(POOL)]
    with pytest.raises(C.CertificateError, match="too few calibration documents to certify: got 20, need at least 29"):
        C.recertify({**per_seq, "groups": groups}, points, risk="top1", epsilon=0.1, delta=0.1)
    res = C.recertify({**per_seq, "groups": groups}, points, risk="top1", epsilon=0.1, delta=0.1, infeasible_ok=True)
    assert res["infeasible"].startswith("too few calibration documents to certify: got 20, need at least 29")
    assert res["best_family"] is None and res["n_units"] == 20 and res["min_units"] == 29
    assert all(e["chosen"] is None and e["num_certified"] == 0 for e in res["families"].values())
    doc_means = np.asarray(per_seq["top1"])[1].reshape(20, 10).mean(axis=1)  # TopK(k=7) per document
    point = res["families"]["topk"]["grid"][1]
    assert point["risk_mean"] == pytest.approx(doc_means.mean())
    assert point["p_value"] == pytest.approx(float(hb_pvalue(doc_means.mean(), 20, 0.1)))
    assert point["upper_bound"] == pytest.approx(float(hb_upper_bound(doc_means.mean(), 20, 0.05)))
    assert point["upper_bound"] > 0.1 and not point["certified"]
    # enough documents: the same call certifies as before and says nothing is wrong
    ok = C.recertify({**per_seq, "groups": [i // 2 for i in range(POOL)]}, points, risk="top1", epsilon=0.1, delta=0.1,
                     infeasible_ok=True)
    assert ok["infeasible"] is None and ok["best_family"] is not None


def test_run_step_certifies_over_documents_and_draws_the_frontier_when_eps_is_out_of_reach(small_config, tmp_path):
    """8 calibration documents: ε = 0.2 needs 17 over 4 families, the frontier's 2ε = 0.4 needs 8."""  # 4 named
    from dataclasses import replace

    from bh_routing.study import Study

    study = Study(replace(small_config, certify_epsilon=0.2, certify_families=["topk", "topp", "weight_ratio", "bh"]),
                  tmp_path / "run", steps=("certify",))
    cert = study.run("certify")["steps"]["certify"]
    assert cert["unit"] == "document" and cert["n_units"] == study.inputs.split.calibration.num_documents == 8
    assert cert["infeasible"].startswith("too few calibration documents to certify: got 8, need at least 17")
    assert cert["best_family"] is None and cert["held_out"]["families"] == {}
    assert max(cert["frontier"]["epsilon"]) == pytest.approx(0.4)
    assert cert["frontier"]["families"]["topk"][-1] is not None  # at 0.4 the model's own k is certified
    study.export()
    text = (tmp_path / "run" / "RESULTS.md").read_text()
    assert "**Nothing can be certified at ε = 0.2, δ = 0.1 with 8 documents**" in text
    assert "on 8 calibration documents (8 windows" in text and "| 0.4 |" in text
    assert (tmp_path / "run" / "certified_frontier.png").is_file()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(risk="kl", epsilon=0.1, delta=0.1), "risk must be one of top1, loss, got 'kl'"),
        (dict(risk="top1", epsilon=0.0, delta=0.1), r"epsilon must be in \(0, 1\], got 0.0"),
        (dict(risk="top1", epsilon=1.2, delta=0.1), r"epsilon must be in \(0, 1\], got 1.2"),
        (dict(risk="loss", epsilon=2.0, delta=0.1), r"epsilon must be in \(0, 1\], got 2.0"),
        (dict(risk="top1", epsilon=0.1, delta=1.0), r"delta must be in \(0, 1\), got 1.0"),
        (dict(risk="top1", epsilon=0.1, delta=0), r"delta must be in \(0, 1\), got 0"),
        (dict(risk="top1", epsilon="x", delta=0.1), "epsilon must be a number"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(C.CertificateError, match=match):
        C.check_certify_args(**kwargs)


def test_unknown_family():
    with pytest.raises(C.CertificateError, match="unknown strategy families .*available: topk, topp"):
        C.default_grid(8, families=("topk", "nope"))
    with pytest.raises(C.CertificateError, match="needs a calibration"):
        C.default_grid(8, families=("bh-calibrated",))


def test_strategy_round_trip():
    for point in C.default_grid(8, families=("topk", "topp", "weight_ratio", "bh")):
        rebuilt = C.strategy_from_description(point.strategy.describe())
        assert type(rebuilt) is type(point.strategy) and rebuilt.describe() == point.strategy.describe()
    with pytest.raises(C.CertificateError, match="calibrated null: pass its calibration"):
        C.strategy_from_description({"name": "bh", "alpha": 0.1, "temperature": 1.0, "min_k": 1, "max_k": None,
                                     "pvalues": "calibrated", "weight_rule": "model"})
    with pytest.raises(C.CertificateError, match="unknown strategy 'magic'"):
        C.strategy_from_description({"name": "magic"})


@pytest.fixture(scope="session")
def certificate(embedded, pool, tmp_path_factory):
    """A real certificate of the top-k family on 40 pool sequences (9 passes of 40 x 32 tokens)."""
    model, _ = embedded
    cert = C.certify(model, pool[:40], risk="top1", epsilon=0.2, delta=0.2, families=("topk",), seed=7,
                     model_name="embedded:olmoe-tiny", batch_size=40)
    path = tmp_path_factory.mktemp("cert") / "certificate.json"
    C.save_certificate(cert, path)
    return cert, path


def test_certificate_contents(certificate):
    cert, path = certificate
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(cert))
    assert saved["format"] == "bh-routing-certificate" and saved["format_version"] == "1"
    assert saved["model"]["top_k"] == 8 and saved["model"]["fingerprint"].startswith("sha256:")
    assert saved["seed"] == 7 and saved["n_sequences"] == 40 and saved["seq_len"] == SEQ_LEN
    assert {"torch", "transformers", "bh_routing"} <= set(saved["versions"])
    grid = saved["families"]["topk"]["grid"]
    assert [p["param"] for p in grid] == [8, 7, 6, 5, 4, 3, 2, 1]
    for p in grid:
        assert {"p_value", "upper_bound", "mean_k", "compute_fraction", "risk_mean", "certified"} <= set(p)
        assert p["risk_mean"] <= p["upper_bound"] <= 1.0
    chosen = grid[saved["families"]["topk"]["chosen"]]
    assert chosen["certified"] and chosen["mean_k"] < 8  # ε = 0.2 lets top-k cut experts
    assert saved["best_family"] == "topk"
    # recertifying the saved per-sequence risks reproduces the certificate
    again = C.recertify(saved["per_sequence"], [{k: p[k] for k in ("family", "param", "label", "strategy", "mean_k",
                                                                    "compute_fraction")} for p in grid],
                        risk="top1", epsilon=0.2, delta=0.2)
    assert again["families"]["topk"]["chosen"] == saved["families"]["topk"]["chosen"]


def test_certified_strategy_and_held_out(embedded, pool, certificate):
    model, _ = embedded
    cert, path = certificate
    s = bh_routing.certified_strategy(path, model)
    chosen = C.chosen_point(cert)
    assert isinstance(s, TopK) and s.k == chosen["param"]
    assert bh_routing.certified_strategy(str(path), model, family="topk").k == s.k
    with pytest.raises(C.CertificateError, match="family 'bh' is not in the certificate; available: topk"):
        bh_routing.certified_strategy(path, model, family="bh")
    held = C.held_out_check(model, pool[100:140], cert, batch_size=40)
    entry = held["families"]["topk"]
    assert entry["label"] == chosen["label"] and entry["mean_k"] == pytest.approx(chosen["param"])
    assert 0.0 <= entry["risk_mean"] <= 1.0 and entry["meets_epsilon"] == (entry["risk_mean"] <= 0.2)


def test_certificate_of_another_model_is_refused(certificate, tiny_model_dir):
    _, path = certificate
    other, _ = load_model(str(tiny_model_dir))
    with pytest.raises(C.CertificateError, match=r"certificate was made on another model \(embedded:olmoe-tiny"):
        bh_routing.certified_strategy(path, other)


def test_bad_certificate_files(tmp_path, embedded):
    model, _ = embedded
    with pytest.raises(C.CertificateError, match="certificate not found"):
        C.load_certificate(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(C.CertificateError, match="not a bh-routing certificate"):
        C.load_certificate(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(C.CertificateError, match="cannot read certificate"):
        C.load_certificate(tmp_path / "y.json")


def test_split_experiment_agrees_with_recertify(pool_risks):
    """The vectorised split loop picks what recertify picks on the same calibration half."""
    per_seq, points = pool_risks
    for seed in range(4):
        cal = np.random.default_rng(seed).permutation(POOL)[: POOL // 2]
        half = {"top1": np.asarray(per_seq["top1"])[:, cal].tolist(),
                "loss_delta": np.asarray(per_seq["loss_delta"])[:, cal].tolist()}
        cert = C.recertify(half, points, risk="top1", epsilon=0.15, delta=0.1)
        res = C.split_experiment(per_seq, points, risk="top1", epsilon=0.15, delta=0.1, n_splits=1, seed=seed)
        assert res["ltt_mean_k"] == C.chosen_point(cert)["mean_k"]


def test_certified_frontier_is_monotone(pool_risks):
    per_seq, points = pool_risks
    fr = C.certified_frontier(per_seq, points, risk="top1", delta=0.1, epsilons=[0.01, 0.05, 0.1, 0.2, 0.3, 0.5])
    assert fr["families"]["topk"][0] is None  # 200 sequences are too few for ε = 0.01 at δ/2
    ks = [k for k in fr["families"]["topk"] if k is not None]
    assert ks == sorted(ks, reverse=True) and ks[-1] < ks[0]  # larger ε, fewer experts


def test_certify_refuses_too_few_sequences_before_running(embedded, pool, monkeypatch):
    model, _ = embedded
    from bh_routing.analysis.certify import procedure

    monkeypatch.setattr(procedure, "measure_risks", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(C.CertificateError, match=r"got 10, need at least 38 for epsilon=0.1, delta=0.1 over 5 families"):
        C.certify(model, pool[:10], risk="top1", epsilon=0.1, delta=0.1)


def test_certified_rows_recertify_from_saved_risks(certificate):
    cert, _ = certificate
    same = C.certified_rows(cert)
    assert same[0]["setting"] == C.chosen_point(cert)["label"] and same[0]["best"]
    loose = C.certified_rows(cert, epsilon=0.4)
    tight = C.certified_rows(cert, epsilon=0.12)
    assert loose[0]["mean_k"] <= same[0]["mean_k"] <= tight[0]["mean_k"]
    with pytest.raises(C.CertificateError, match="too few calibration sequences"):
        C.certified_rows(cert, epsilon=0.02)


def test_certified_section_and_figure(certificate, tmp_path):
    from bh_routing.report.certified import certified_frontier_figure, certified_section

    cert, _ = certificate
    cert = {**cert, "held_out": {"n_sequences": 5, "families": {"topk": {
        "label": "TopK(k=6)", "risk_mean": 0.25, "share_above_epsilon": 0.4, "mean_k": 6.0, "meets_epsilon": False}}},
        "frontier": C.certified_frontier(cert["per_sequence"], C.grid_points(cert), risk="top1", delta=0.2,
                                         epsilons=[0.1, 0.2, 0.3])}
    text = "\n".join(certified_section(cert))
    chosen = C.chosen_point(cert)
    assert f"| Top-k | {chosen['label']} | {chosen['mean_k']:.3f} |" in text
    assert "Cheapest under the same guarantee: **Top-k**" in text
    assert "| Top-k | TopK(k=6) | 0.2500 | 40.0% | 6.000 | **no** |" in text  # a missed ε is shown, not hidden
    assert "on 40 calibration sequences (their first 32 tokens)" in text
    path = certified_frontier_figure(cert, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_step_is_skipped_with_too_few_sequences(small_config, tmp_path):
    from bh_routing.study import Study

    study = Study(small_config, tmp_path / "run", steps=("certify",))
    res = study.run("certify")
    assert res["steps"]["certify"]["skipped"].startswith("too few calibration documents to certify at any ε up to 0.2: got 8")
    assert "certified" not in res["derived"]
    study.export()
    assert "No certificate in this run: too few calibration documents" in (tmp_path / "run" / "RESULTS.md").read_text()
    assert not (tmp_path / "run" / "certified_frontier.png").exists()


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("certify_epsilon", 2.0, r"certify_epsilon must be in \(0, 1\], got 2.0"),
        ("certify_delta", 1.0, r"certify_delta must be in \(0, 1\), got 1.0"),
        ("certify_risk", "kl", "certify_risk must be one of top1, loss, got 'kl'"),
        ("certify_families", ["topk", "x"], r"unknown strategy families \['x'\]"),
        ("certify_tokens", 1, r"certify_tokens must be 0 \(the whole sequence\) or an int >= 2, got 1"),
        ("certify_grid", "huge", "certify_grid"),
    ],
)
def test_run_config_checks_the_certify_settings(field, value, match):
    from bh_routing.study.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match=match):
        RunConfig(**{field: value}).validate()


def test_section_states_the_document_caveat(certificate):
    from bh_routing.report.certified import certified_section

    cert, _ = certificate
    text = "\n".join(certified_section({**cert, "calibration_documents": 12}, figure=None))
    assert "the 40 calibration sequences come from 12 documents" in text
    assert "come from" not in "\n".join(certified_section(cert, figure=None))
