"""The output folder of a run: its file names (one home), atomic writes, the checks before writing.

A run writes into ``--out``: ``bh_routing_results.json``, ``comparative_results.csv``,
``RESULTS.md``, the figures, ``calibration.safetensors`` (when it fits one) and ``.steps/`` (one
JSON per finished step, so an interrupted run resumes).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..core import BHRoutingError

RESULTS_JSON = "bh_routing_results.json"
COMPARATIVE_CSV = "comparative_results.csv"
REPORT_MD = "RESULTS.md"
CALIBRATION_FILE = "calibration.safetensors"
STEPS_DIR = ".steps"


class RunError(BHRoutingError, RuntimeError):
    """A run that cannot start; the message is one line for the user."""


def _file_mode() -> int:
    """The mode a new file gets from ``open`` under the current umask (0o644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a uniquely named temporary file in the same folder.

    Readers never see a half-written file, and two writers never share a temporary name; the file
    gets the usual mode (the temporary file's private 0600 is widened to what ``open`` would give).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


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
