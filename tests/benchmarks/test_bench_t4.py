"""benchmarks/bench_t4.py --dry-run: the T4 emulation of the GPU check, on the CPU at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_runs_the_colab_profile_and_the_full_run_timed_per_step(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out = tmp_path / "t4.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_t4.py"), "--dry-run", "--full-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    doc = json.loads(out.read_text())
    assert doc["dry_run"] and [r["name"] for r in doc["rows"]] == ["t4-emulation", "full-run"]
    for row in doc["rows"]:
        assert row["exit_code"] == 0
        assert set(row["step_s"]) == {"calibration"}  # the dry run: `calibrate`; on a GPU every step of `run`
    assert doc["plan"]["dtype"] == "float16" and doc["plan"]["experts_backend"] == "eager"
    assert doc["rows"][0]["args"][:3] == ["calibrate", "--config", "colab-t4"]
