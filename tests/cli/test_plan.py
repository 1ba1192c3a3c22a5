"""`bh-routing plan`: the memory plan for the real OLMoE-1B-7B config, without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bh_routing.cli import app

ROOT = Path(__file__).resolve().parents[2]
OLMOE = str(ROOT / "benchmarks" / "olmoe-1b-7b-0924.config.json")
GiB = 2**30
H100_QUICK_BF16_MAX_ALLOCATED = 14_600_830_976  # benchmarks/gpu-check/peakmem.json (random weights, H100)


def _plan(*args) -> dict:
    r = CliRunner().invoke(app, ["plan", "--model", OLMOE, *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_olmoe_fits_a_t4_in_float16_with_eager_experts():
    p = _plan("--gpu", "t4")
    assert (p["dtype"], p["experts_backend"]) == ("float16", "eager")
    assert p["fits"] and p["predicted_peak_gib"] <= 14.5
    assert [b["item"] for b in p["budget"]] == ["weights", "CUDA context", "working set", "allocator slack"]
    assert 12.8 < p["budget"][0]["gib"] < 13.0  # 6.92 B parameters in float16


def test_same_answer_from_memory_and_capability():
    a, b = _plan("--gpu", "t4"), _plan("--gpu-memory", "15102MiB", "--compute-capability", "7.5")
    assert {k: a[k] for k in ("dtype", "experts_backend", "predicted_peak_gib", "fits")} == \
           {k: b[k] for k in ("dtype", "experts_backend", "predicted_peak_gib", "fits")}


def test_h100_quick_prediction_is_within_ten_percent_of_the_measurement():
    p = _plan("--gpu", "h100", "--quick")
    assert (p["dtype"], p["experts_backend"]) == ("bfloat16", "grouped_mm")
    assert abs(p["predicted_allocated_gib"] * GiB / H100_QUICK_BF16_MAX_ALLOCATED - 1) <= 0.10


@pytest.mark.parametrize("gpu, dtype", [("l4", "bfloat16"), ("a100", "bfloat16"), ("h100", "bfloat16")])
def test_other_gpus(gpu, dtype):
    p = _plan("--gpu", gpu)
    assert p["dtype"] == dtype and p["fits"] and p["batch_size"] == 16


def test_text_output_states_the_budget_line_by_line():
    r = CliRunner().invoke(app, ["plan", "--model", OLMOE, "--gpu", "t4"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("device cuda:0 (Tesla T4, compute capability 7.5, 14.7 GiB): float16, experts eager")
    assert [ln.split()[0] for ln in lines[2:6]] == ["weights", "CUDA", "working", "allocator"]
    assert lines[-1] == "fits in 14.50 GiB of Tesla T4's 14.75 GiB (compute capability 7.5)"


@pytest.mark.parametrize("args, message", [
    (["--gpu", "v100"], "gpu must be one of t4, l4, a100, h100, got 'v100'"),
    (["--gpu-memory", "15GiB"], "give --gpu (t4, l4, a100, h100) or both --gpu-memory and --compute-capability"),
    (["--gpu-memory", "lots", "--compute-capability", "7.5"], "gpu memory must look like 15GiB, 16GB or 15102MiB, got 'lots'"),
    (["--gpu-memory", "15GiB", "--compute-capability", "seven"], "compute capability must look like 7.5, got 'seven'"),
    (["--gpu", "t4", "--dtype", "fp8"], "dtype must be one of float32, bfloat16, float16, got 'fp8'"),
    (["--gpu", "t4", "--memory-fraction", "2"], "memory fraction must be in (0, 1], got 2.0"),
])
def test_bad_input_is_one_line(args, message):
    r = CliRunner().invoke(app, ["plan", "--model", OLMOE, *args])
    assert r.exit_code == 2
    assert r.stderr == f"error: {message}\n"
