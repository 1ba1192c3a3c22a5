"""The oracle's bookkeeping: selections, FDP/power per sequence, matched baselines, null rejection rates."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from bh_routing.analysis import oracle
from bh_routing.core import BH, CalibrationBuilder, TopK, TopP, WeightRatio, bh_count, empirical_null_pvalues
from bh_routing.models.ablation import LayerAblation


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, 200, (5, 24), generator=torch.Generator().manual_seed(0))
    return oracle.record(model, ids, batch_size=2)


def test_record_shapes_and_sequence_major_order(data):
    assert (data.num_sequences, data.seq_len, data.num_experts, data.top_k) == (5, 24, 16, 4)
    for rec in data.layers:
        assert rec.logits.shape == (120, 16) and rec.effect.shape == (120, 4)
        assert torch.equal(rec.model_indices.sort(1).values, rec.logits.topk(4, dim=1).indices.sort(1).values)


@pytest.mark.parametrize(
    "family,param,strategy",
    [("topk", 1, TopK(1)), ("topk", 3, TopK(3)), ("topp", 0.5, TopP(0.5)), ("topp", 0.95, TopP(0.95)),
     ("weight_ratio", 0.3, WeightRatio(0.3)), ("weight_ratio", 0.05, WeightRatio(0.05, min_k=2, max_k=3))],
)
def test_ranking_selections_equal_the_strategies_route(data, family, param, strategy):
    ranking = oracle.Ranking(data, min_k=getattr(strategy, "min_k", 1), max_k=getattr(strategy, "max_k", None) or 4)
    fast, slow = ranking.selection(family, param), oracle.select(data, strategy)
    w = slow.effect.shape[-1]
    assert torch.equal(fast.effect[..., :w], slow.effect) and (fast.effect[..., w:] == -1).all()
    assert ranking.mean_k(family, param) == pytest.approx(slow.mean_k)


def test_bh_discoveries_leave_out_the_experts_forced_by_min_k(data):
    strategy = BH(0.01, min_k=2, max_k=3)
    sel = oracle.select(data, strategy)
    selected = (sel.effect >= 0).sum(-1)  # (L, T)
    assert selected.min() == 2 and selected.max() == 3
    for layer, rec in enumerate(data.layers):
        k_hat, _ = bh_count(empirical_null_pvalues(rec.logits), 0.01)  # BH's own count, unclamped
        assert torch.equal(sel.discovery[layer].sum(-1), k_hat.clamp(max=3))
        # the discoveries are the leading slots
        assert torch.equal(sel.discovery[layer], torch.arange(sel.discovery.shape[-1]) < k_hat.clamp(max=3)[:, None])
    forced_only = (sel.discovery.sum(-1) == 0) & (selected == 2)
    assert forced_only.any()  # tokens with two selected experts and no discovery exist
    v = oracle.per_sequence(data, sel, 0.1)
    fdps = []
    for layer in range(2):
        for t in range(24, 48):  # sequence 1
            d = sel.discovery[layer, t]
            false = int((d & (sel.effect[layer, t] <= 0.1)).sum())
            fdps.append(false / max(int(d.sum()), 1))
    assert v["fdp"][1] == pytest.approx(np.mean(fdps))


def test_per_sequence_against_a_hand_count():
    # 1 layer, 2 sequences of 2 tokens, E = 4, model top-2
    logits = torch.tensor([[4.0, 3, 0, 0], [0, 4.0, 3, 0], [0, 0, 4.0, 3], [3.0, 0, 0, 4]])
    rec = LayerAblation(
        logits=logits,
        model_indices=torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]]),
        model_weights=torch.full((4, 2), 0.4),
        effect=torch.tensor([[0.5, 0.05], [0.5, 0.3], [0.01, 0.02], [0.9, 0.2]]),
    )
    data = oracle.OracleData([rec], num_sequences=2, seq_len=2, num_experts=4, top_k=2, norm_topk_prob=False)
    v = oracle.per_sequence(data, oracle.select(data, TopK(2)), 0.1)
    # needed (effect > 0.1): token0 {0}, token1 {1, 2}, token2 {}, token3 {3, 0}
    # FDP per token: 1/2, 0, 1, 0 -> per sequence 0.25, 0.5; power: 1, 1 (token 2 needs none)
    np.testing.assert_allclose(v["fdp_all"], [0.25, 0.5])
    np.testing.assert_allclose(v["power"], [1.0, 1.0])
    np.testing.assert_allclose(v["mean_k"], [2.0, 2.0])
    v1 = oracle.per_sequence(data, oracle.select(data, TopK(1)), 0.1)
    # top-1 = experts 0, 1, 2, 3: needed? yes, yes, no, yes -> FDP 0, 0 | 1, 0; power 1/1+1/2 -> 2/3, 1/2
    np.testing.assert_allclose(v1["fdp_all"], [0.0, 0.5])
    np.testing.assert_allclose(v1["power"], [2 / 3, 1 / 2])
    # an expert outside the model's top-k is never needed: route everything
    v4 = oracle.per_sequence(data, oracle.select(data, TopK(4)), 0.1)
    np.testing.assert_allclose(v4["fdp_all"], [(3 / 4 + 2 / 4) / 2, (1 + 2 / 4) / 2])
    layer = oracle.per_layer(data, oracle.select(data, TopK(2)), 0.1)
    assert layer["fdp"] == pytest.approx([0.375]) and layer["power"] == pytest.approx([1.0])


def test_matched_baselines_hit_the_target_mean_k(data):
    ranking = oracle.Ranking(data, min_k=1, max_k=4)
    for family in ("topk", "topp", "weight_ratio"):
        for target in (1.5, 2.7, 3.6):
            m = oracle.matched(ranking, family, target, tau=0.1)
            assert m is not None
            assert m["mean_k"].mean() == pytest.approx(target, abs=1e-3)
            a, b = m["settings"]
            ka, kb = ranking.mean_k(family, a), ranking.mean_k(family, b)
            assert ka <= target + 1e-9 <= kb + 2e-9
    assert oracle.matched(ranking, "topk", 4.5, tau=0.1) is None
    with pytest.raises(ValueError, match="unknown baseline family 'x'"):
        oracle.matched(ranking, "x", 2.0, tau=0.1)


def test_null_rejection_rates_against_a_direct_count(data):
    b = CalibrationBuilder(num_layers=2, num_experts=16, top_k=4, reservoir_size=64, seed=0)
    for layer, rec in enumerate(data.layers):
        b.update(layer, rec.logits[:60])
    cal = b.finalize(model_name="m", model_fingerprint="f")
    documents = ["a", "a", "b", "c", "c"]  # per-document rates: windows of one document pooled
    rates = oracle.null_rejection_rates(data, lambda l, z: cal.pvalues(z, l), levels=(0.05, 0.2), documents=documents)
    for layer, rec in enumerate(data.layers):
        p = cal.pvalues(rec.logits, layer)
        null = torch.ones(120, 16, dtype=torch.bool)
        null[torch.arange(120)[:, None], rec.model_indices] = False
        assert rates[layer]["null_pairs"] == 120 * 12
        for a in (0.05, 0.2):
            row = rates[layer][str(a)]
            assert row["pooled"] == pytest.approx(float((p[null] <= a).double().mean()))
            hit = ((p <= a) & null).reshape(5, 24, 16)
            per_doc = [float(hit[d].sum() / (len(d) * 24 * 12)) for d in ([0, 1], [2], [3, 4])]
            assert row["mean"] == pytest.approx(np.mean(per_doc)) and row["n"] == 3
            assert row["ci_low"] <= row["mean"] <= row["ci_high"]


def test_fdr_oracle_step_on_a_tiny_model(tiny_model_dir, small_config):
    from bh_routing.analysis.experiments import fit_calibration

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    seqs = torch.randint(3, 200, (4, 32), generator=torch.Generator().manual_seed(2))
    from bh_routing.models import inspect_model

    cal = fit_calibration(model, seqs.flip(0), routing=inspect_model(model), null="unrouted", reservoir_size=256, seed=0,
                          model_name="tiny")
    cfg = small_config
    out = oracle.fdr_oracle(model, seqs, cfg.routing(), cal, documents=["x", "y", "y", "z"])
    assert out["tau"] == oracle.TAU and out["num_sequences"] == 4 and out["top_k"] == 4
    assert out["num_documents"] == 3
    labels = [r["label"] for r in out["bh"]]
    variants = ("empirical", "calibrated", "calibrated-router", "standardized")
    assert labels == [f"BH-{m}(α={a:g})" for m in variants for a in (0.05, 0.3)]
    data = oracle.record(model, seqs)
    for row in out["bh"]:
        for key in ("fdp", "fdp_all", "power"):
            assert row[key]["ci_low"] <= row[key]["mean"] <= row[key]["ci_high"]
        strategy = BH(row["alpha"], pvalues=row["pvalues"], calibration=None if row["pvalues"] == "empirical" else cal,
                      selection=row["selection"])
        v = oracle.per_sequence(data, oracle.select(data, strategy), oracle.TAU)
        by_doc = [v["fdp"][0], v["fdp"][1:3].mean(), v["fdp"][3]]
        assert row["fdp"]["mean"] == pytest.approx(np.mean(by_doc)) and row["fdp"]["n"] == 3
        assert row["fdp_vs_alpha"]["decision"] == "too few documents"
        assert set(row["tau_sensitivity"]) == {f"{t:g}" for t in oracle.TAUS}
        assert set(row["baselines"]) == {"topk", "topp", "weight_ratio"}
        for b in row["baselines"].values():
            if b is not None:
                assert b["fdp_diff"]["ci_low"] <= b["fdp_diff"]["mean_diff"] <= b["fdp_diff"]["ci_high"]
                assert b["fdp_diff"]["correction"] in ("holm", "none")
        assert row["verdict"].startswith(row["label"])
    assert set(out["null_rejection"]) == {"empirical", "calibrated", "standardized"}
    assert [r["layer"] for r in out["null_rejection"]["calibrated"]] == [0, 1]


def test_oracle_alphas_thin_a_long_sweep_and_keep_the_reports_alpha():
    from bh_routing import RunConfig

    assert oracle.oracle_alphas(RunConfig().routing()) == [0.001, 0.01, 0.05, 0.2]
    assert oracle.oracle_alphas(RunConfig(alphas=[0.3, 0.05], alpha=0.1).routing()) == [0.05, 0.1, 0.3]
    assert len(oracle.oracle_alphas(RunConfig(quick=True).effective().routing())) >= 3


def test_tau_on_calibration_windows_is_the_largest_that_passes(tiny_model_dir):
    """scripts/oracle_checks.py's criterion on calibration windows: the largest τ whose oracle routing
    costs at most max_ppl_cost perplexity; a tolerance so large that every τ passes picks the largest."""
    from bh_routing.analysis.oracle.tau import choose_tau
    from bh_routing.models import load_model

    model, _ = load_model(tiny_model_dir, device="cpu")
    seqs = torch.randint(5, 2000, (3, 16), generator=torch.Generator().manual_seed(3))
    out = choose_tau(model, seqs, top_k=4, taus=(0.05, 0.3, 5.0), max_ppl_cost=0.01)
    rows = {r["tau"]: r for r in out["rows"]}
    assert out["windows"] == 3 and list(rows) == [0.05, 0.3, 5.0]
    assert rows[5.0]["mean_k"] == 1.0  # no effect exceeds 5: min_k experts only
    passing = [t for t, r in rows.items() if r["ppl_ratio"] - 1 <= 0.01]
    assert out["chosen"] == (max(passing) if passing else None)
    assert all(r["passes"] == (t in passing) for t, r in rows.items())
    assert choose_tau(model, seqs, top_k=4, taus=(0.05, 5.0), max_ppl_cost=100.0)["chosen"] == 5.0
    with pytest.raises(ValueError, match="max_ppl_cost must be > 0, got 0"):
        choose_tau(model, seqs, top_k=4, max_ppl_cost=0)
