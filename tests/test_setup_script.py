"""scripts/setup.sh --print-torch: the torch build chosen for the machine, without installing anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup.sh"


def _print_torch(tmp_path: Path, nvidia_smi: str | None, **env) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text("#!/bin/sh\n" + nvidia_smi + "\n")
        fake.chmod(0o755)
    # a PATH with the fake nvidia-smi (or none) and the basic tools only
    path = f"{bin_dir}:/usr/bin:/bin"
    full = {k: v for k, v in os.environ.items() if k != "BH_ROUTING_TORCH"}
    return subprocess.run(["bash", str(SCRIPT), "--print-torch"], capture_output=True, text=True,
                           env={**full, "PATH": path, **env}, timeout=60)


def test_gpu_machine_gets_a_cuda_build(tmp_path):
    r = _print_torch(tmp_path, 'echo "GPU 0: Tesla T4 (UUID: GPU-0000)"')
    assert r.returncode == 0, r.stderr
    assert r.stdout == "torch --index-url https://download.pytorch.org/whl/cu126\n"


@pytest.mark.parametrize("nvidia_smi", [None, 'echo "NVIDIA-SMI has failed because it could not communicate"; exit 9',
                                        "echo 'No devices were found'"])
def test_machine_without_gpu_gets_the_cpu_build(tmp_path, nvidia_smi):
    r = _print_torch(tmp_path, nvidia_smi)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "torch --index-url https://download.pytorch.org/whl/cpu\n"


def test_override_wins_on_either_machine(tmp_path):
    r = _print_torch(tmp_path, 'echo "GPU 0: NVIDIA A100"', BH_ROUTING_TORCH="torch==2.8.0 --index-url https://x/cu128")
    assert r.stdout == "torch==2.8.0 --index-url https://x/cu128\n"


def test_print_torch_installs_nothing(tmp_path):
    before = (ROOT / ".venv").exists()
    _print_torch(tmp_path, None)
    assert (ROOT / ".venv").exists() == before


def test_unknown_argument_is_refused(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr == "error: usage: bash scripts/setup.sh [--print-torch]\n"
