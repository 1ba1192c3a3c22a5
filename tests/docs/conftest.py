"""Fixtures of the docs tests: one shared quick run of the embedded model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from md_examples import shell_env

QUICK_RUN = ["run", "--quick", "--out", "runs/quick"]  # as the quick start types it (docs/index.md)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, request) -> Path:
    """One ``bh-routing run --quick --out runs/quick`` on the embedded model, shared by the pages
    (and by the pytest-xdist workers of one session: their base folders share a parent)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    xdist = hasattr(request.config, "workerinput")  # a pytest-xdist worker
    shared = base.parent if xdist else base  # never a folder of an earlier session
    folder = shared / "docs-quick-run"
    with FileLock(str(shared / "docs-quick-run.lock")):
        if not (folder / "runs" / "quick" / "RESULTS.md").is_file():
            folder.mkdir(exist_ok=True)
            env = shell_env(folder / ".bin")
            r = subprocess.run([sys.executable, "-m", "bh_routing.cli", *QUICK_RUN, "--threads", "1"], cwd=folder,
                               env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
    return folder / "runs" / "quick"
