"""Out of memory inside a step: retried with half the batch down to one sequence, then one line; a
second run resumes from the finished steps. The CUDA error is injected (this machine has no GPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bh_routing.models.memory import batch_cap
from bh_routing.study import Study
from bh_routing.study.pipeline import StepOutOfMemory
from bh_routing.study.registry import STEPS

MESSAGE = ("out of memory in step alpha at batch 1 (on cpu); the finished steps are saved: run the same command "
           "again to resume, with a smaller --seq-len or on a larger GPU")


def _flaky(monkeypatch, name: str, failures: int, seen: list):
    step = STEPS[name]

    def compute(ctx):
        seen.append(batch_cap(ctx.model))
        if len(seen) <= failures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.53 GiB")
        return step.compute(ctx)

    monkeypatch.setitem(STEPS, name, dataclasses.replace(step, compute=compute))


def test_retried_with_half_the_batch(small_config, tmp_path, monkeypatch, capsys):
    seen = []
    _flaky(monkeypatch, "alpha", 2, seen)
    study = Study(small_config, tmp_path / "r")
    res = study.run("alpha")
    assert "alpha_sensitivity" in res["derived"]
    assert seen == [None, 8, 4]  # no cap (the steps' own batches, at most 16), then 8, then 4
    err = capsys.readouterr().err
    assert "out of memory in step alpha at batch 16: retrying it with batch 8" in err
    assert "out of memory in step alpha at batch 8: retrying it with batch 4" in err


def test_persistent_out_of_memory_ends_in_one_line_and_the_run_resumes(small_config, tmp_path, monkeypatch):
    seen = []
    _flaky(monkeypatch, "alpha", 99, seen)
    out = tmp_path / "r"
    with pytest.raises(StepOutOfMemory) as err:
        Study(small_config, out).run("alpha")
    assert str(err.value) == MESSAGE
    assert seen == [None, 8, 4, 2, 1]
    assert (out / ".steps" / "calibration.json").is_file()  # finished before alpha ran out
    monkeypatch.undo()

    def boom(ctx):
        raise AssertionError("a finished step was recomputed")

    monkeypatch.setitem(STEPS, "calibration", dataclasses.replace(STEPS["calibration"], compute=boom))
    res = Study(small_config, out).run("alpha")
    assert "alpha_sensitivity" in res["derived"]


def test_the_command_prints_one_line(small_config, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bh_routing.cli import app

    _flaky(monkeypatch, "alpha", 99, [])
    out = tmp_path / "c"
    r = CliRunner().invoke(app, ["sweep", "--model", small_config.model, "--out", str(out), "--eval-sequences", "4",
                                 "--seq-len", "32", "--alphas", "0.05,0.3", "--temperatures", "1.0"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {MESSAGE}"
