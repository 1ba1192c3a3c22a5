"""The output folder of a run: the results file (its one writer and one reader), the lock, the checks.

A run writes into ``--out``: ``bh_routing_results.json``, ``comparative_results.csv``,
``RESULTS.md``, the figures, ``calibration.safetensors`` (when it fits one), ``.steps/`` (one
JSON per finished step, so an interrupted run resumes) and ``.bh_routing.lock`` (held while a
run writes, so that a second run into the same folder is refused instead of mixing files).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs into one folder are not detected
    fcntl = None

from ..core import BHRoutingError
from ..core.files import atomic_path, atomic_write_text, json_clean
from ..report import write_report

RESULTS_JSON = "bh_routing_results.json"
CALIBRATION_FILE = "calibration.safetensors"
STEPS_DIR = ".steps"
LOCK_FILE = ".bh_routing.lock"


class RunError(BHRoutingError, RuntimeError):
    """A run that cannot start; the message is one line for the user."""


def check_writable(out: Path) -> None:
    """Raise RunError unless ``out`` exists as a writable folder or can be created."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunError(f"output folder is not a folder: {probe}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"output folder is not writable: {out}")


#: What the report reads of a results document besides its steps and derived summaries.
NEEDED = {
    "config": ("seed",),
    "environment": ("torch", "transformers", "bh_routing"),
    "model": ("name", "model_class", "num_moe_layers", "num_experts", "top_k", "norm_topk_prob", "total_params",
              "active_params", "dtype", "device", "experts_implementation"),
}


def read_results(folder: str | Path) -> dict:
    """The results document of a finished run in ``folder``: the one reader of the results file.

    Raises a one-line RunError when it is missing, unreadable, not a results file, or lacks what
    the report reads."""
    path = Path(folder) / RESULTS_JSON
    if not path.is_file():
        raise RunError(f"no {RESULTS_JSON} in {folder}: run `bh-routing run` first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not {"config", "model", "steps", "derived"} <= set(doc):
        raise RunError(f"{path} is not a bh-routing results file (needs config, model, steps and derived)")
    for part, keys in NEEDED.items():
        missing = [k for k in keys if not isinstance(doc.get(part), dict) or k not in doc[part]]
        if missing:
            raise RunError(f"{path} is incomplete: {part} lacks {', '.join(missing)}")
    if not isinstance(doc.get("eval_domains"), list):
        raise RunError(f"{path} is incomplete: no eval_domains list")
    return doc


def results_model(folder: str | Path) -> str | None:
    """The model name recorded in the results file in ``folder`` (even an incomplete one), or None
    when there is none or it is unreadable."""
    try:
        doc = json.loads((Path(folder) / RESULTS_JSON).read_text(encoding="utf-8"))
        return doc.get("model", {}).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def write_results(results: dict, out: str | Path) -> Path:
    """Write the results document (NaN as null) to ``out``: the one writer of the results file."""
    return atomic_write_text(Path(out) / RESULTS_JSON, json.dumps(json_clean(results), indent=1, ensure_ascii=False))


def export(results: dict, out: str | Path, *, figures: bool = True) -> list[Path]:
    """The results file, then the report (CSV, figures, RESULTS.md) into ``out``; their paths."""
    out = Path(out)
    check_writable(out)  # a read-only folder: one line (RunError), not a traceback halfway through
    out.mkdir(parents=True, exist_ok=True)
    results = json_clean(results)
    return [write_results(results, out), *write_report(results, out, figures=figures)]


_HELD: dict[Path, list] = {}  # lock file -> [fd, depth]: re-entrant within one process


@contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold the folder's lock while writing into it; RunError when another process holds it."""
    out.mkdir(parents=True, exist_ok=True)
    path = (out / LOCK_FILE).resolve()
    if fcntl is None or path in _HELD:
        if path in _HELD:
            _HELD[path][1] += 1
        try:
            yield
        finally:
            if path in _HELD:
                _HELD[path][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"another bh-routing run is writing to {out}: wait for it to finish, or choose another --out") from None
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
