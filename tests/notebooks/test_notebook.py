"""The Colab notebook: committed without outputs, and runs top to bottom in a real Jupyter kernel.

The run uses the embedded model on the CPU (the notebook's own choice without a GPU), a quick
configuration, and writes its outputs under a temporary folder (``BH_ROUTING_NOTEBOOK_OUT``).
"""

import json
import os
from pathlib import Path

import pytest

# in the 'test' extra; a machine with only the runtime (the GPU check's `pytest -m gpu`) skips this module
nbformat = pytest.importorskip("nbformat", reason="nbformat/nbclient are in the 'test' extra")
NotebookClient = pytest.importorskip("nbclient", reason="nbformat/nbclient are in the 'test' extra").NotebookClient

from bh_routing.report import COMPARATIVE_CSV, REPORT_MD, fmt  # noqa: E402
from bh_routing.study.results import RESULTS_JSON  # noqa: E402
from bh_routing.report.figures import SEED_FIGURES as FIGURES  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "OLMoE_BenjaminiHochberg_Routing.ipynb"
ELEVEN = {RESULTS_JSON, COMPARATIVE_CSV, REPORT_MD, *FIGURES}
CELL_TIMEOUT_S = 900  # per cell; a loaded 2-core machine runs the longest cell in about a minute


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"code cells {dirty} hold outputs or execution counts: clear them before committing"
    assert "widgets" not in nb.metadata, "widget state is stored in the notebook's metadata: clear it before committing"


def test_settings_come_first_and_no_algorithm_lives_in_the_notebook():
    cells = _code_cells(nbformat.read(NOTEBOOK, as_version=4))
    first = cells[0].source
    for name in ("PACKAGE", "MODEL", "QUICK", "PROFILE", "DTYPE", "OUT", "SEED"):
        assert f"\n{name} = " in f"\n{first}", f"the settings cell does not define {name}"
    text = "\n".join(c.source for c in cells)
    for forbidden in ("def benjamini", "torch.sort(", "argsort(", "def _bh", "def route("):
        assert forbidden not in text, f"the notebook implements routing itself ({forbidden!r}); call the package"
    # an Output widget (also inside ipywidgets.interact) can stall headless nbclient runs for a whole
    # cell timeout (jupyter/nbclient#312): the sliders update an HTML widget instead
    assert "interact(" not in text and "widgets.Output" not in text


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    monkeypatch.setenv("BH_ROUTING_NOTEBOOK_OUT", str(out))
    monkeypatch.delenv("BH_ROUTING_NOTEBOOK_MODEL", raising=False)  # the notebook's own choice
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU path, as in CI, also on a GPU machine
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread in the kernel too (see tests/conftest.py)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except Exception:  # nbclient raises on the first failing cell; keep its outputs for the message
        nbformat.write(nb, tmp_path / "executed.ipynb")
        raise

    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join(f"{e.ename}: {e.evalue}" for e in errors)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= len(FIGURES), f"{len(images)} images displayed, expected the {len(FIGURES)} figures"

    names = {p.name for p in out.iterdir()}
    assert ELEVEN <= names, f"missing outputs: {sorted(ELEVEN - names)}"
    assert (tmp_path / "outputs.zip").is_file()
    res = json.loads((out / RESULTS_JSON).read_text())
    assert res["config"]["quick"] is True and res["model"]["name"] == "embedded:olmoe-tiny"

    # the conclusions are written from this run's numbers
    markdown = [o["data"]["text/markdown"] for o in _code_cells(nb)[-1].outputs if "text/markdown" in o.get("data", {})]
    assert markdown and "## Conclusions" in markdown[0]
    st = res["derived"]["statistics"]
    for number in (st["experts"]["mean_a"], st["expert_reduction_pct"]["mean"], st["ppl_bh"]["ppl"]):
        assert fmt(number) in markdown[0]
