"""A routing rule defined outside the package goes through a whole run like the built-in families:
frontier, knob profile, matched comparisons (bisection on its own knob), oracle, certificate, figures.
Contract breaches end the command in one line before any model loads."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from bh_routing import RunConfig, run
from bh_routing.core import families as F
from bh_routing.study.results import RESULTS_JSON

RULE = textwrap.dedent('''
    import torch
    from bh_routing import Strategy

    class MassGap(Strategy):
        """Experts in the router's order until the next one's probability drops below ratio x the last one's."""
        name, knob, grid = "mass_gap", "ratio", (0.05, 0.2, 0.4, 0.6, 0.8, 0.95)
        label, color = "Probability gap", "#17becf"

        def __init__(self, ratio=0.5, *, weight_rule="model"):
            self.ratio, self.weight_rule = float(ratio), weight_rule

        def choose(self, logits, probs, *, layer, model_top_k):
            p, order = probs.sort(dim=-1, descending=True)  # (T, E)
            keep = p[:, 1:model_top_k] >= self.ratio * p[:, : model_top_k - 1]  # (T, W - 1)
            return order, 1 + keep.long().cumprod(dim=-1).sum(dim=-1), model_top_k

    class Jumpy(MassGap):
        """Not monotone in its knob: k falls, then rises."""
        name = "jumpy"

        def choose(self, logits, probs, *, layer, model_top_k):
            order, counts, width = super().choose(logits, probs, layer=layer, model_top_k=model_top_k)
            return order, (counts if self.ratio < 0.5 else (width + 1 - counts)), width

    class NoCount(MassGap):
        name = "no_count"

        def choose(self, logits, probs, *, layer, model_top_k):
            order, counts, width = super().choose(logits, probs, layer=layer, model_top_k=model_top_k)
            return order, counts * 0, width
''')


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userrules")
    (folder / "userrules.py").write_text(RULE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for name in ("mass_gap", "jumpy", "no_count"):
        F._REGISTERED.pop(name, None)


@pytest.fixture(scope="module")
def finished(rules, tiny_model_dir, tmp_path_factory):
    cfg = RunConfig(
        model=str(tiny_model_dir), alphas=[0.05, 0.3], alpha=0.05, pvalues=["empirical"], bh_pvalues="empirical",
        strategies=["topk", "topp", "bh", "userrules:MassGap"], topp_values=[0.5, 0.9], seq_len=32, eval_sequences=4,
        calib_sequences=8, reservoir_size=256, new_tokens=4, seed=1, certify_epsilon=0.5, certify_delta=0.5,
        certify_families=["topk", "userrules:MassGap"], certify_tokens=16,
    )
    out = tmp_path_factory.mktemp("run")
    return out, run(cfg, out)


def test_user_rule_in_every_part_of_the_run(finished):
    out, res = finished
    assert json.loads((out / RESULTS_JSON).read_text())["steps"]["frontier"] == res["steps"]["frontier"]
    steps = res["steps"]
    mine = [r for r in steps["frontier"] if r["family"] == "mass_gap"]
    assert [r["param"] for r in mine] == [0.05, 0.2, 0.4, 0.6, 0.8, 0.95]
    assert mine[0]["label"] == "MassGap(ratio=0.05)"
    assert steps["knobs"]["mass_gap"]["direction"] == -1  # measured: a larger ratio keeps fewer experts
    targets = [t for t in steps["matched"]["targets"] if t["family"] == "mass_gap"]
    assert targets and all(t["baseline_family"] == "topk" for t in targets)
    assert any(t["matched"] for t in targets)
    grid = res["derived"]["matched"]["grid"]
    assert any(r["bh_family"] == "mass_gap" and r["baseline_family"] == "topk" for r in grid)
    assert any(r["bh_family"] == "mass_gap" and r["baseline_family"].startswith("bh-") for r in grid)
    others = steps["fdr_oracle"]["others"]
    assert {r["family"] for r in others} == {"mass_gap"} and all(0 <= r["fdp"]["mean"] <= 1 for r in others)
    cert = json.loads((out / "certificate.json").read_text())
    assert "mass_gap" in cert["families"]
    ratios = [p["param"] for p in cert["families"]["mass_gap"]["grid"]]
    assert ratios == sorted(ratios)  # safest (most experts) first: ratio rising
    md = (out / "RESULTS.md").read_text()
    assert "mass_gap" in md and "ratio = " in md


def test_user_rule_has_its_markers_on_the_pareto_figure(finished, monkeypatch):
    from bh_routing.report import figures

    seen = []
    real = figures.get_family
    monkeypatch.setattr(figures, "get_family", lambda name: seen.append(name) or real(name))
    out, res = finished
    figures.pareto(res, out / "again.png")
    assert "mass_gap" in seen and (out / "again.png").stat().st_size > 0


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-m", "bh_routing.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("rule, message", [
    ("userrules:NoCount", "error: strategies: routing rule userrules:NoCount: counts must lie in [1, width=8]"),
    ("userrules:Missing", "error: strategies: routing rule 'userrules:Missing': module 'userrules' has no 'Missing'"),
])
def test_broken_rule_is_one_line_before_the_model_loads(rule, message, rules, tmp_path):
    r = _cli("run", "--model", str(tmp_path / "no-such-model"), "--strategies", f"topk,{rule}", "--out",
             str(tmp_path / "out"), cwd=rules)
    assert r.returncode == 2 and r.stderr.strip().startswith(message) and "\n" not in r.stderr.strip()
    assert not (tmp_path / "out").exists()


def test_a_knob_that_is_not_monotone_ends_the_run_in_one_line(rules, tiny_model_dir, tmp_path):
    cfg = RunConfig(model=str(tiny_model_dir), pvalues=["empirical"], bh_pvalues="empirical",
                    strategies=["topk", "userrules:Jumpy"], seq_len=32, eval_sequences=4, calib_sequences=8)
    with pytest.raises(F.StrategyContractError, match=r"^routing rule userrules:Jumpy: mean k is not monotone"):
        run(cfg, tmp_path / "out", steps=("frontier",))
