"""The notebook's set-up code installs bh-routing from a wheel uploaded beside it (no public address).

A wheel of this checkout is built once per session (``pip wheel --no-deps``); the settings cell and
the install part of the set-up cell run in a fresh virtual environment whose only link to the test
environment is a path to its site-packages (torch, transformers ... without bh_routing), from a
folder outside the checkout holding the wheel: the cell must install the wheel and import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "OLMoE_BenjaminiHochberg_Routing.ipynb"
INSTALL_END = "import torch\nfrom IPython.display"  # the set-up cell's install part ends here


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    import importlib.util

    out = tmp_path_factory.mktemp("wheel")
    # the build backend (hatchling) from this environment when it has it, else pip fetches it (build isolation)
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(ROOT)],
                   check=True, timeout=600)
    (found,) = out.glob("bh_routing-*.whl")
    return found


def _cells() -> list[str]:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.slow
def test_notebook_installs_from_an_uploaded_wheel(wheel, tmp_path):
    settings, setup = _cells()[0], _cells()[1]
    assert INSTALL_END in setup
    env_dir = tmp_path / "venv"
    # without pip of its own: pip, setuptools and the rest come from the test environment (see the .pth below)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the test environment's packages, but not its bh_routing (an editable install's .pth is not read from here)
    Path(site, "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "content"  # like Colab's /content: not a checkout, the uploaded wheel in it
    work.mkdir()
    (work / wheel.name).write_bytes(wheel.read_bytes())
    code = settings + "\n" + setup.split(INSTALL_END)[0] + "\nprint('INSTALLED', bh_routing.__version__, bh_routing.__file__)\n"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BH_ROUTING_NOTEBOOK_PACKAGE", "VIRTUAL_ENV")}
    r = subprocess.run([str(py), "-c", code], cwd=work, capture_output=True, text=True, timeout=600,
                       env={**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"installing: {work / wheel.name}" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("INSTALLED"))
    assert str(env_dir) in line  # imported from the fresh environment, not from the checkout


def test_without_wheel_or_address_the_cell_says_what_to_do(tmp_path):
    settings, setup = _cells()[0], _cells()[1]
    code = (settings + "\nimport builtins\n_real = builtins.__import__\n"
            "def _no_bh(name, *a, **k):\n    if name == 'bh_routing':\n        raise ImportError(name)\n    return _real(name, *a, **k)\n"
            "builtins.__import__ = _no_bh\n" + setup.split(INSTALL_END)[0])
    env = {k: v for k, v in os.environ.items() if k != "BH_ROUTING_NOTEBOOK_PACKAGE"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0
    assert (f"RuntimeError: bh_routing is not installed and this notebook is not inside a checkout of the repository: "
            f"upload a bh_routing-*.whl to {tmp_path} or set PACKAGE in the settings cell (e.g. a git URL)") in r.stderr
