"""BH variants in a run: names, configuration, the default chosen on calibration windows, temperature shape."""

import pytest
import torch
from safetensors.torch import save_file

from bh_routing.analysis import derive, experiments, variants
from bh_routing.analysis.settings import parse_variant
from bh_routing.study.config import AUTO, VARIANTS, ConfigError, RunConfig
from bh_routing.study.steps.notebook import _check_calibration_file, needs_calibration
from bh_routing.core import CalibrationBuilder
from bh_routing.models import load_model


def test_variant_names_and_strategies():
    assert parse_variant("calibrated-router-wide") == ("calibrated", "router", True)
    assert parse_variant("standardized") == ("standardized", "pvalue", False)
    assert len(VARIANTS) == 12 and "empirical-router" in VARIANTS
    b = CalibrationBuilder(num_layers=1, num_experts=8, top_k=2)
    b.update(0, torch.randn(200, 8))
    cal = b.finalize(model_name="m", model_fingerprint="f")
    s = RunConfig().routing().bh("calibrated-router-wide", cal, alpha=0.1, wide_k=4)
    assert (s.pvalues, s.selection, s.max_k, s.alpha) == ("calibrated", "router", 4, 0.1)
    assert RunConfig().routing().bh("empirical", cal).calibration is None
    with pytest.raises(ValueError, match="needs wide_k"):
        RunConfig().routing().bh("empirical-wide", None)


def test_config_of_variants():
    assert RunConfig().validate().bh_pvalues == AUTO
    assert needs_calibration(RunConfig(pvalues=["standardized"], bh_pvalues="standardized"))
    assert not needs_calibration(RunConfig(pvalues=["empirical-router"], bh_pvalues=AUTO))
    with pytest.raises(ConfigError, match=r"pvalues must be one of .*got 'calibrated-best'"):
        RunConfig(pvalues=["calibrated-best"]).validate()
    with pytest.raises(ConfigError, match="bh_pvalues 'standardized' must be one of the swept pvalues"):
        RunConfig(pvalues=["empirical"], bh_pvalues="standardized").validate()
    with pytest.raises(ConfigError, match="bh_pvalues must be one of"):
        RunConfig(pvalues=["calibrated-wide"], bh_pvalues="calibrated-wide").validate()


def test_format_1_calibration_refused_before_the_model_loads(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({"null_sorted": torch.zeros(1, 2, 3), "null_count": torch.zeros(1, 2, dtype=torch.long)}, str(path),
              metadata={"format": "bh_routing.calibration", "format_version": "1"})
    cfg = RunConfig(calibration=str(path))
    with pytest.raises(ConfigError, match="has no standardised null .*leave standardized out of --pvalues"):
        _check_calibration_file(cfg)
    _check_calibration_file(RunConfig(calibration=str(path), pvalues=["calibrated"], bh_pvalues="calibrated"))


def test_temperature_shape():
    runs = [{"family": "bh-a", "param": t, "mean_k": k} for t, k in ((0.5, 3.0), (1.0, 2.0), (2.0, 2.0))]
    runs += [{"family": "bh-b", "param": t, "mean_k": 1.5} for t in (0.5, 1.0)]
    runs += [{"family": "bh-c", "param": t, "mean_k": k} for t, k in ((0.5, 3.0), (1.0, 2.0), (4.0, 2.5))]
    shapes = {f: m["shape"] for f, m in derive.temperature_monotone(runs).items()}
    assert shapes == {"bh-a": "decreasing", "bh-b": "constant", "bh-c": "not monotone"}


def test_default_chosen_on_calibration_windows(tiny_model_dir):
    model, _ = load_model(tiny_model_dir, device="cpu")
    torch.manual_seed(0)
    seqs = torch.randint(2, 4000, (6, 24))  # (N, S) calibration windows
    info = __import__("bh_routing.models", fromlist=["inspect_model"]).inspect_model(model)
    b = CalibrationBuilder(num_layers=info.num_moe_layers, num_experts=info.num_experts, top_k=info.top_k, reservoir_size=256)
    from bh_routing.analysis.matching import patch_pass
    from bh_routing.core import TopK

    _, logits = patch_pass(model, seqs, TopK(4))
    for layer, z in enumerate(logits):
        b.update(layer, z)
    from bh_routing.models import model_fingerprint

    cal = b.finalize(model_name="tiny", model_fingerprint=model_fingerprint(model))
    cfg = RunConfig(pvalues=["empirical", "standardized", "calibrated-router", "calibrated-router-wide"])
    choice = variants.choose_variant(model, seqs, cfg.routing(), cal, top_k=info.top_k, configured=None)
    assert choice["how"] in ("measured", "unmatched") and choice["chosen"] in cfg.pvalues
    assert [c["variant"] for c in choice["candidates"]] == ["empirical", "standardized", "calibrated-router"]
    matched = [c for c in choice["candidates"] if c["matched"]]
    if choice["how"] == "measured":
        assert choice["chosen"] == min(matched, key=lambda c: c["loss"])["variant"]
        assert all(abs(c["mean_k"] - choice["target_k"]) <= 0.2 for c in matched)
    fixed = variants.choose_variant(model, seqs, RunConfig(pvalues=["empirical"], bh_pvalues="empirical").routing(), cal,
                                    top_k=info.top_k, configured="empirical")
    assert fixed == {"chosen": "empirical", "how": "configured", "reason": "set in the configuration", "candidates": []}
    assert variants.choose_variant(model, seqs, RunConfig(pvalues=["standardized"]).routing(), cal, top_k=info.top_k,
                                   configured=None)["how"] == "only"


def test_resolved_variant_keeps_the_step_keys(small_config, tmp_path, monkeypatch):
    # "auto" is resolved by a step whose result later steps read; the configuration stays as given
    # (validated once, never changed during a run), so later runs of the same study (and of the
    # same folder) reuse the finished steps
    from bh_routing.study import Study

    study = Study(small_config, tmp_path / "v")
    res = study.run("bh_default")
    chosen = res["steps"]["bh_default"]["chosen"]
    assert chosen == res["config"]["bh_pvalues"] and study.config.bh_pvalues == small_config.bh_pvalues == AUTO

    def boom(*a, **k):
        raise AssertionError("a finished step was recomputed")

    monkeypatch.setattr(experiments, "fit_calibration", boom)
    monkeypatch.setattr(variants, "choose_variant", boom)
    study.run("bh_default")
    again = Study(small_config, tmp_path / "v")
    assert again.run("bh_default")["steps"]["bh_default"]["chosen"] == chosen
    assert again.config.bh_pvalues == AUTO and again.results["config"]["bh_pvalues"] == chosen
