"""The figures' honesty rules, checked on the matplotlib figures themselves (no model needed)."""

import numpy as np
import pytest

from bh_routing.report import figures


@pytest.fixture
def captured(monkeypatch):
    """The figure objects the drawing functions would save."""
    figs = []

    def keep(fig, path):
        figs.append(fig)
        return path

    monkeypatch.setattr(figures, "save_figure", keep)
    return figs


MODEL = {"name": "m", "num_moe_layers": 2, "num_experts": 8, "top_k": 4}


def _run(label, fam, param, hist):
    k = np.arange(len(hist))
    mean = float((k * hist).sum() / sum(hist))
    return {"label": label, "family": fam, "param": param, "k_histogram": hist, "mean_k": mean,
            "sd_k": float(np.sqrt(((k - mean) ** 2 * hist).sum() / sum(hist))), "reduction_pct": 100 * (1 - mean / 4)}


def test_hist_quantile():
    assert [figures.hist_quantile([0, 5, 0, 5], q) for q in (0.1, 0.5, 0.51, 0.9)] == [1, 1, 3, 3]
    assert figures.hist_quantile([0, 0, 7], 0.1) == 2


def test_alpha_bars_stay_within_min_k_and_the_heatmap_has_no_empty_k0_column(captured, tmp_path):
    # mostly one expert, a few at four: mean - sd falls below 1, the 10th percentile does not
    runs = [_run("a1", "bh-calibrated", 0.01, [0, 90, 0, 0, 10]), _run("a2", "bh-calibrated", 0.1, [0, 50, 0, 0, 50])]
    assert runs[0]["mean_k"] - runs[0]["sd_k"] < 1
    res = {"model": MODEL, "config": {"min_k": 1, "bh_pvalues": "calibrated", "alpha": 0.05},
           "steps": {"alpha": runs}, "derived": {"alpha_sensitivity": runs}}
    figures.alpha_sensitivity(res, tmp_path / "a.png")
    ax_k, _, ax_heat = captured[0].axes[:3]
    lows = [seg[0][1] for coll in ax_k.collections for seg in coll.get_segments()]  # error bar bottoms
    assert min(lows) >= 1
    assert [int(t) for t in ax_heat.get_xticks()] == [1, 2, 3, 4]


def test_many_prompts_are_shown_as_distributions(captured, tmp_path):
    rows = [{"prompt_label": f"p{i}", "topk_mean_experts": 4.0, "bh_mean_experts": 3.0, "topk_loss": 2.0,
             "bh_loss": 2.1, "expert_reduction_pct": 25.0 + i % 7, "loss_change": 0.1 - 0.01 * (i % 5)} for i in range(500)]
    res = {"model": MODEL, "config": {"bh_pvalues": "calibrated"}, "steps": {"comparative": rows}, "derived": {}}
    figures.comparative(res, tmp_path / "c.png")
    labels = [t.get_text() for ax in captured[0].axes for t in ax.get_xticklabels()]
    assert not any(label.startswith("p") for label in labels)  # no axis with 500 prompt names
    assert "500 prompts" in captured[0]._suptitle.get_text()
    res["steps"]["comparative"] = rows[: figures.MAX_PROMPT_BARS]
    figures.comparative(res, tmp_path / "c.png")
    assert [t.get_text() for t in captured[1].axes[0].get_xticklabels()][:2] == ["p0", "p1"]
