"""docs/custom_rules.md as a user runs it: the rule saved as mymodule.py, the Python blocks executed,
and the command run as written (a --quick run on the embedded model)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "custom_rules.md"


def _blocks(lang: str) -> list[str]:
    return [b.replace("\n   ", "\n").strip() for b in re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "mymodule.py").write_text(_blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    from bh_routing.core import families

    families._REGISTERED.pop("mass_gap", None)
    sys.modules.pop("mymodule", None)


def test_the_rule_keeps_the_contract_and_the_python_blocks_run(folder):
    from bh_routing.core.families import check_contract, check_family

    import mymodule

    check_family(mymodule.MassGap)
    for ratio in mymodule.MassGap.grid:
        check_contract(mymodule.MassGap(ratio))
    assert len(_blocks("python")[0].splitlines()) <= 25  # "a rule in 20 lines" (imports and blank lines aside)
    for block in _blocks("python")[1:]:
        exec(compile(block, str(DOC), "exec"), {})


@pytest.mark.slow
def test_the_command_runs_as_written(folder):
    (command,) = [b for b in _blocks("bash") if b.startswith("bh-routing run")]
    args = command.split()[1:] + ["--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    r = subprocess.run([sys.executable, "-m", "bh_routing.cli", *args], cwd=folder, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((folder / "runs" / "mass_gap" / "bh_routing_results.json").read_text())
    assert any(r["family"] == "mass_gap" for r in res["steps"]["frontier"])
    assert "mass_gap" in (folder / "runs" / "mass_gap" / "RESULTS.md").read_text()
