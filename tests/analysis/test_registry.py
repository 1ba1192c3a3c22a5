"""The step registry: a new step is one registration, computed, cached and resumed like the others."""

import json

import pytest

from bh_routing import Study
from bh_routing.study.pipeline import STEP_GROUPS, step_seconds
from bh_routing.study.registry import STEPS, Step, closure, register_step


def test_seed_steps_and_groups():
    assert list(STEPS)[:9] == ["calibration", "bh_default", "knobs", "baseline", "alpha", "temperature", "frontier",
                              "token_level", "comparative"]
    assert STEP_GROUPS["sweep"] == ("calibration", "alpha", "temperature")
    assert STEP_GROUPS["lm-eval"] == ("downstream",)
    assert closure(("comparative",)) == ("calibration", "bh_default", "comparative")
    with pytest.raises(ValueError, match="unknown steps"):
        closure(("alphas",))
    with pytest.raises(ValueError, match="needs unregistered steps"):
        register_step(Step("orphan", lambda ctx: 1, needs=("nope",)))
    with pytest.raises(ValueError, match="registered twice"):
        register_step(Step("alpha", lambda ctx: 1))


def test_a_registered_step_runs_once_and_is_reused(small_config, tmp_path):
    calls = []

    def probe(ctx):
        calls.append(ctx.routing.top_k)
        return {"top_k": ctx.routing.top_k, "seqs": list(ctx.inputs.eval_seqs.shape)}

    register_step(Step("probe", probe, groups=("probe",)))
    try:
        study = Study(small_config, tmp_path / "o", steps=("probe",))
        res = study.run()
        assert res["steps"]["probe"] == {"top_k": 4, "seqs": [4, 32]} and calls == [4]
        cached = json.loads((tmp_path / "o" / ".steps" / "probe.json").read_text())
        assert cached["data"] == res["steps"]["probe"]
        seconds = step_seconds(tmp_path / "o")
        assert set(seconds) == {"probe"} and seconds["probe"] >= 0  # where the time went (computed steps only)
        assert "calibration" not in res["steps"]  # not needed, not computed
        Study(small_config, tmp_path / "o", steps=("probe",)).run()
        assert calls == [4]  # reused from .steps/
        with pytest.raises(ValueError, match="outside this study's steps"):
            study.run("alpha")
    finally:
        del STEPS["probe"]
