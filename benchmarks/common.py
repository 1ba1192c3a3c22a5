"""Shared pieces of the benchmarks: paired timing, machine description, small helpers.

The machine these run on is shared and noisy, so no figure is an absolute time alone: each is a
ratio of two things timed side by side in the same process, alternating A and B within every
repeat (ABBA order), and reported as the median over repeats.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the fixed prose of BENCHMARKS*.md (paragraphs that do not depend on a run), one Markdown file a paragraph
TEXT = Path(__file__).resolve().parent / "text"
# a copy of the reference architecture (../shared/reference/), so that the benchmarks run anywhere
REFERENCE_CONFIG = Path(__file__).resolve().parent / "olmoe-1b-7b-0924.config.json"
_SYNC: list = []  # the device to synchronise around every timed call (set_device)


def set_device(device: str) -> None:
    """Time calls on ``device``: on a GPU every timed call is bracketed by a synchronisation."""
    _SYNC.clear()
    if torch.device(device).type == "cuda":
        _SYNC.append(torch.device(device))


def sync() -> None:
    for d in _SYNC:
        torch.cuda.synchronize(d)


@dataclass
class Paired:
    """Times (seconds) of a baseline A and a candidate B measured alternately."""

    a: list[float]
    b: list[float]

    @property
    def a_median(self) -> float:
        return statistics.median(self.a)

    @property
    def b_median(self) -> float:
        return statistics.median(self.b)

    @property
    def ratio(self) -> float:
        """Median over repeats of t_B / t_A, each pair timed back to back."""
        return statistics.median(b / a for a, b in zip(self.a, self.b))

    def as_dict(self) -> dict:
        return {
            "a_median_s": self.a_median,
            "b_median_s": self.b_median,
            "ratio": self.ratio,
            "repeats": len(self.a),
        }


def _once(fn, clock=time.perf_counter) -> float:
    sync()
    start = clock()
    fn()
    sync()
    return clock() - start


def paired(fa, fb, *, repeats: int, warmup: int = 1) -> Paired:
    """Time ``fa`` and ``fb`` alternately: AB, BA, AB, ... so drift hits both alike."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    gc.collect()
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(_once(fa))
            tb.append(_once(fb))
        else:
            tb.append(_once(fb))
            ta.append(_once(fa))
    return Paired(ta, tb)


def rounds(baseline, variants: dict, *, repeats: int, clock=time.perf_counter) -> dict:
    """Time ``baseline()`` and each ``variants[name]()`` in rounds; ratios to the same round's baseline.

    Every round runs the baseline and every variant once, in an order rotated from round to
    round (so neither always runs first); the first round is a warm-up and is not counted. Each
    variant's ``ratio`` is the median over rounds of t(variant) / t(baseline, same round).
    ``clock`` is wall time by default; ``time.process_time`` counts this process's CPU time only
    (all its threads), which other processes on a loaded machine disturb less.
    """
    fns = {"baseline": baseline, **variants}
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for r in range(repeats + 1):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t = _once(fns[name], clock)
            if r > 0:
                times[name].append(t)
    base = times["baseline"]
    return {
        name: {
            "topk_s": statistics.median(base),
            "bh_s": statistics.median(times[name]),
            "ratio": statistics.median(b / a for a, b in zip(base, times[name])),
            "repeats": repeats,
        }
        for name in variants
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """What the numbers were measured on."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "bh_routing": _version("bh-routing"),
        "git_commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu": gpu(),
    }


def gpu() -> str | None:
    """The CUDA device's name, memory and driver-side versions, or None without one."""
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, {p.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}"


# --- pieces of the Markdown pages (each bench_*.py renders its own section; report.py assembles them)


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table, without a final newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def failed(name: str, res: dict) -> str | None:
    """The line that stands for section ``name`` when it failed in the run, else None."""
    if "error" in res:
        return f"**Failed in this run**: `{res['error']}` (traceback in the run's JSON; section `{name}`).\n"
    return None


def docstring(text: str | None) -> str:
    """A module's docstring as Markdown paragraphs (the description of the method used)."""
    return (text or "").strip().replace("``", "`")


def prose(name: str) -> str:
    """The fixed paragraph(s) of benchmarks/text/NAME.md, without the final newline."""
    return (TEXT / f"{name}.md").read_text(encoding="utf-8").rstrip("\n")


def gpu_run(r: dict) -> bool:
    """Whether the run ``r`` (the results of benchmarks/run.py) was made on a GPU."""
    return r.get("device", "cpu") != "cpu"


def device_flag(gpu: bool) -> str:
    return " --device cuda" if gpu else ""
