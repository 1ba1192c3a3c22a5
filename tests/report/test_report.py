"""The report layer on its own: formatting, the registry of figures and sections, atomic writes."""

import json

import pytest

from bh_routing.study.results import RunError
from bh_routing.report import FIGURES, SECTIONS, render
from bh_routing.study.results import read_results
from bh_routing.report.base import fmt, plt, save_figure, table
from bh_routing.report.registry import Figure, Section, register_figure, register_section
from bh_routing.report.figures import SEED_FIGURES

MODEL = {"name": "m", "model_class": "C", "num_moe_layers": 2, "num_experts": 16, "top_k": 4, "norm_topk_prob": False,
         "total_params": 2_000_000, "active_params": 1_000_000, "dtype": "float32", "device": "cpu",
         "experts_implementation": "eager"}
ENV = {"torch": "t", "transformers": "x", "bh_routing": "b"}


def _results(**steps):
    return {"config": {"seed": 1, "quick": False, "eval_sequences": 0, "seq_len": 8, "calib_sequences": 0},
            "environment": ENV, "model": MODEL, "eval_domains": [], "steps": steps, "derived": {}}


def test_fmt_and_table():
    assert [fmt(None), fmt(True), fmt(3), fmt(0.123456)] == ["n/a", "yes", "3", "0.1235"]
    assert table(["a", "b"], [["x", 0.5]]) == "| a | b |\n|---|---|\n| x | 0.5 |"


def test_seed_figures_keep_their_names_and_every_section_is_registered_once():
    assert SEED_FIGURES == ("alpha_sensitivity.png", "temperature_sensitivity.png", "token_level_analysis.png",
                            "comparative_analysis.png", "expert_utilization_heatmap.png", "statistical_analysis.png",
                            "layer_analysis.png", "pareto_frontier.png")
    assert set(SEED_FIGURES) < set(FIGURES) and "downstream" in SECTIONS
    with pytest.raises(ValueError, match="registered twice"):
        register_figure(Figure("pareto_frontier.png", lambda r, p: p))
    with pytest.raises(ValueError, match="registered twice"):
        register_section(Section("summary", lambda r, f: []))


def test_a_registered_section_is_written_in_its_order_only_with_its_data():
    section = register_section(Section("probe-section", lambda res, figures: ["## Probe", f"{res['steps']['probe']}", ""],
                                       needs=("probe",), order=12))
    try:
        assert "## Probe" not in render(_results(), [])
        md = render(_results(probe=7), [])
        assert "## Probe\n7\n" in md and md.index("## Probe") < md.index("## Reproduce")
    finally:
        del SECTIONS[section.name]


def test_save_figure_writes_a_150_dpi_png_and_leaves_no_temporary_file(tmp_path):
    from PIL import Image

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "f.png")
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    with Image.open(path) as im:
        assert im.info["dpi"][0] == pytest.approx(150, abs=1)


@pytest.mark.parametrize("content, message", [
    (None, "no bh_routing_results.json in"),
    ('{"config": {', "cannot read"),
    ("{}", "is not a bh-routing results file"),
    (json.dumps([1, 2]), "is not a bh-routing results file"),
])
def test_read_results_refuses_missing_or_damaged_files_in_one_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "bh_routing_results.json").write_text(content)
    with pytest.raises(RunError, match=message) as err:
        read_results(tmp_path)
    assert "\n" not in str(err.value)
