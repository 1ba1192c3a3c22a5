"""The output folder of a run: its file names (one home), atomic writes, the checks before writing.

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
from ..core.files import atomic_path

RESULTS_JSON = "bh_routing_results.json"
COMPARATIVE_CSV = "comparative_results.csv"
REPORT_MD = "RESULTS.md"
CALIBRATION_FILE = "calibration.safetensors"
STEPS_DIR = ".steps"
LOCK_FILE = ".bh_routing.lock"


def json_clean(x):
    """``x`` with every NaN/inf float replaced by None (JSON has no NaN), in nested dicts and lists."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_clean(v) for v in x]
    return x


class RunError(BHRoutingError, RuntimeError):
    """A run that cannot start; the message is one line for the user."""


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`bh_routing.core.files.atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def environment() -> dict:
    """Versions and machine of a run (recorded in every results file and certificate)."""
    import platform

    import numpy as np
    import scipy
    import torch
    import transformers

    from .. import __version__

    return {
        "bh_routing": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }


def check_writable(out: Path) -> None:
    """Raise RunError unless ``out`` exists as a writable folder or can be created."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunError(f"output folder is not a folder: {probe}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"output folder is not writable: {out}")


def read_results(folder: str | Path) -> dict:
    """The results document of a finished run in ``folder``; RunError when missing or unreadable."""
    path = Path(folder) / RESULTS_JSON
    if not path.is_file():
        raise RunError(f"no {RESULTS_JSON} in {folder}: run `bh-routing run` first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not {"config", "model", "steps", "derived"} <= set(doc):
        raise RunError(f"{path} is not a bh-routing results file (needs config, model, steps and derived)")
    return doc


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
