"""benchmarks/gpu_check.sh and run.py's options: the CPU-only parts, so that the GPU check does not rot."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _script(*args, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd="/")


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_only_into_its_folder(tmp_path):
    """--dry-run: pytest -m gpu, then routing, MoE block, ops and syncs, generation and peak memory at tiny sizes,
    then the compiled path: decode compiled whole, capture, fused routing, compiled vLLM engines."""
    repo_files = [ROOT / "BENCHMARKS-gpu.md", ROOT / "benchmarks" / "generation_speed_gpu.png", ROOT / "BENCHMARKS.md"]
    before = [_digest(p) for p in repo_files]
    proc = _script("--dry-run", str(tmp_path / "logs"), timeout=2400)  # 15 minutes on a loaded 2-core machine
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    assert [_digest(p) for p in repo_files] == before
    logs = tmp_path / "logs"
    assert {p.name for p in logs.iterdir()} >= {"env.txt", "pytest.log", "benchmarks.log", "gpu.json", "BENCHMARKS-gpu.md", "generation_speed_gpu.png",
                                                "compiled.json", "fused_routing.json", "vllm_compiled.json", "vllm_compiled.md"}
    assert "(0 of the steps 3-6 failed)" in (logs / "benchmarks.log").read_text()
    compiled = json.loads((logs / "compiled.json").read_text())  # step 3: decode compiled whole, BH vs top-8
    assert {r["variant"] for r in compiled["rows"]} >= {"top-8 compiled", "BH 0.05 compiled", "top-8 patched compiled"}
    assert "fullgraph yes" in (logs / "overhead_compiled.log").read_text()  # step 4
    assert all(r["same_choice"] for r in json.loads((logs / "fused_routing.json").read_text())["rows"])  # step 5
    engines = json.loads((logs / "vllm_compiled.json").read_text())["rows"]  # step 6: compiled vLLM engines
    assert set(engines) == {"top-8 compiled", "BH(α=0.05) compiled"} and all(r["tokens_per_s"] > 0 for r in engines.values())
    assert "PYTEST-EXIT 0" in (logs / "pytest.log").read_text()  # the gpu tests were selected (and skipped: no GPU)
    res = json.loads((logs / "gpu.json").read_text())
    assert res["sections"] == ["routing", "moe", "overhead", "generation", "peakmem"]
    assert not [s for s in res["sections"] if "error" in res[s]]
    for key in ("decode_speedup_bh_batch1", "decode_bh_mean_k", "patch_overhead_decode", "decode_speedup_bh_batch16"):
        assert math_finite(res[key]), key
    assert [r["exit_code"] for r in res["peakmem"]["rows"]] == [0, 0]  # bh-routing run --quick, bf16 and fp16
    md = (logs / "BENCHMARKS-gpu.md").read_text()
    for heading in ("## 1. Routing cost", "## 2. Compute actually saved", "### Torch ops and host syncs", "## 6. Generation speed", "## 7. Peak GPU memory"):
        assert heading in md
    assert "Dry run at tiny sizes" in md and "`pytest -m gpu`**:" in md


def math_finite(x) -> bool:
    return isinstance(x, float) and x == x and abs(x) != float("inf")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_script_refuses_before_running_anything(tmp_path):
    proc = _script(str(tmp_path / "logs"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no CUDA device")
    assert not (tmp_path / "logs" / "pytest.log").exists()


def test_bad_usage_is_one_line_and_exit_2(tmp_path):
    proc = _script("--bogus", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: usage: bash benchmarks/gpu_check.sh [--dry-run] [LOGDIR]"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "tpu"], "error: --device must be cpu or cuda[:N], got 'tpu'"),
        (["--layers", "17"], "error: --layers must be in [1, 16], got 17"),
        (["--only", "generation,bogus"], "error: unknown sections ['bogus']; available: "),
        (["--render", "x.json"], "error: --render needs --markdown FILE"),
    ],
)
def test_run_options_are_checked_first(argv, message, capsys):
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message)
    assert len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_run_refuses_cuda_without_a_device(capsys):
    assert run.main(["--device", "cuda", "--only", "generation"]) == 2
    assert capsys.readouterr().err.strip() == "error: --device cuda asked for, but no CUDA device is available"


def test_splice_replaces_between_markers_or_appends(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# B\n\nintro\n")
    run.splice(path, "## 6. one", "<!-- a -->", "<!-- /a -->")
    assert path.read_text() == "# B\n\nintro\n\n<!-- a -->\n## 6. one\n<!-- /a -->\n"
    path.write_text(path.read_text() + "\n## after\n")
    run.splice(path, "## 6. two\n", "<!-- a -->", "<!-- /a -->")
    assert path.read_text() == "# B\n\nintro\n\n<!-- a -->\n## 6. two\n<!-- /a -->\n\n## after\n"


def test_pytest_summary_line(tmp_path):
    log = tmp_path / "pytest.log"
    log.write_text(
        "....\nE   ModuleNotFoundError: No module named 'nbformat'\nERROR tests/x.py\n"
        "4 passed, 1 skipped, 261 deselected, 1 error in 16.63s\nPYTEST-EXIT 1\n"
    )
    assert run._pytest_summary(log) == {
        "summary": "4 passed, 1 skipped, 261 deselected, 1 error in 16.63s",
        "exit_code": 1,
        "errors": ["tests/x.py (ModuleNotFoundError: No module named 'nbformat')"],
    }
    assert run._pytest_summary(tmp_path / "missing.log")["exit_code"] is None
