"""No choice reads the evaluation documents (issue #26).

The evaluation windows of a tiny-model Study are replaced, after the split, by token ids outside the
vocabulary: any forward pass over them is an IndexError. The steps that only choose (the calibration,
the reported BH variant, the knob profiles) must then still complete; the steps that choose and then
evaluate (matched: the α and knob searches; premise: the adaptive settings; certify: the grids, their
directions and the certificate; fdr_oracle: the τ calibration text picks) must complete with only their
evaluation phase replaced by a stub, which records that it was handed the poisoned windows. A planted
bug (the calibration windows served from the evaluation ones) makes every one of them fail: the test
can fail.
"""

from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from bh_routing import RunConfig, Study
from bh_routing.analysis import certify, evaluate, matching, oracle
from bh_routing.analysis.evaluate import evaluate_strategy
from bh_routing.core import TopK
from bh_routing.study.inputs import Inputs
from bh_routing.study.pipeline import run_steps
from bh_routing.study.steps import premise as premise_step

CHOICE_ONLY = ("calibration", "bh_default", "knobs")


@pytest.fixture(scope="module")
def study(tiny_model_dir, tmp_path_factory):
    cfg = RunConfig(
        model=str(tiny_model_dir), alphas=[0.05, 0.3], alpha=0.05, temperatures=[1.0], topp_values=[0.5, 0.9],
        ratio_values=[0.5, 0.1], seq_len=32, eval_sequences=4, calib_sequences=20, reservoir_size=256, new_tokens=4,
        seed=1, certify_epsilon=0.3,  # few enough calibration documents certify something (not skipped)
    )
    s = Study(cfg, tmp_path_factory.mktemp("poisoned"))
    run_steps(s.inputs, s.out, ("frontier",))  # what matched needs, with clean evaluation windows
    return s


def poisoned_ids(study) -> torch.Tensor:
    vocab = study.inputs.model.config.vocab_size
    return torch.full_like(study.inputs.split.evaluation.ids, vocab + 7)  # (N, S): out of the embedding


@contextmanager
def poisoned(study):
    split = study.inputs.split
    study.inputs.split = replace(split, evaluation=replace(split.evaluation, ids=poisoned_ids(study)))
    try:
        yield study.inputs.split.evaluation.ids
    finally:
        study.inputs.split = split


def rerun(study, name):
    (study.out / ".steps" / f"{name}.json").unlink(missing_ok=True)
    return run_steps(study.inputs, study.out, (name,))[name]


def test_the_poison_breaks_any_forward_pass(study):
    """Positive control: a pass over the poisoned windows fails (so a choice that made one would fail)."""
    with poisoned(study) as ids, pytest.raises(IndexError):
        evaluate_strategy(study.inputs.model, ids, TopK(4), label="t", family="topk", param=4)


@pytest.mark.parametrize("name", CHOICE_ONLY)
def test_steps_that_only_choose_never_read_the_evaluation_windows(study, name):
    with poisoned(study):
        assert rerun(study, name) is not None or name == "calibration"


def _stub_evaluation(monkeypatch, name, seen):
    """Replace the evaluation phase of step ``name`` by a stub that records the windows it was handed."""
    def fake_run(model, seqs, strategy, *, label, family, param, **kw):
        seen.append(seqs)
        return SimpleNamespace(to_dict=lambda: {"label": label, "family": family, "param": param, "mean_k": 0.0})

    if name == "matched":
        monkeypatch.setattr(matching, "evaluate_strategy", fake_run)
        monkeypatch.setattr(evaluate, "evaluate_strategy", fake_run)  # knobs.matched_family_runs imports it per call
    elif name == "premise":
        monkeypatch.setattr(premise_step, "premise_study", lambda model, seqs, *a, **k: seen.append(seqs) or {})
    elif name == "certify":
        monkeypatch.setattr(certify, "held_out_check", lambda model, seqs, cert: seen.append(seqs) or {})
    elif name == "fdr_oracle":
        monkeypatch.setattr(oracle, "fdr_oracle", lambda model, seqs, *a, **k: seen.append(seqs) or {})


@pytest.mark.parametrize("name", ["matched", "premise", "certify", "fdr_oracle"])
def test_steps_that_choose_then_evaluate_choose_on_calibration_text(study, monkeypatch, name):
    seen = []
    _stub_evaluation(monkeypatch, name, seen)
    with poisoned(study) as ids:
        data = rerun(study, name)
    assert seen and all(torch.equal(s, ids[:, : s.shape[1]]) for s in seen)  # only the evaluation phase saw them
    if name == "matched":
        assert any(t["matched"] for t in data["targets"])  # the searches ran and met targets
    if name == "certify":
        assert "skipped" not in data and data["n_units"] >= 5
    if name == "fdr_oracle":
        assert data["tau_on_calibration"]["rows"]
    if name == "premise":
        (study.out / ".steps" / "premise.json").unlink()  # the stub's empty result is not a premise step


@pytest.mark.parametrize("name", [*CHOICE_ONLY, "matched", "premise", "certify", "fdr_oracle"])
def test_a_choice_that_reads_the_evaluation_windows_fails(study, monkeypatch, name):
    """Planted bug: the calibration windows are served from the evaluation ones; every step must fail."""
    _stub_evaluation(monkeypatch, name, [])
    monkeypatch.setattr(Inputs, "calib_seqs", property(lambda self: self.split.evaluation.ids))
    with poisoned(study), pytest.raises(IndexError):
        rerun(study, name)
