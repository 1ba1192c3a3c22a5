"""End to end: wall time of ``bh-routing run`` (and ``--quick``) on the embedded model.

Each command runs as a subprocess with the environment of this process (torch picks its own
threads there), writing into a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import prose, table


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("bh-routing")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "bh_routing.cli"]


def time_command(args: list[str], *, timeout_s: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bh-bench-"))
    cmd = cli() + args + ["--out", str(out / "run")]
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        # stdout holds the command's summary; stderr its progress bars (and the error, if any)
        rc = proc.returncode
        tail = (proc.stdout if rc == 0 else proc.stderr).strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        rc, tail = None, [f"timed out after {timeout_s:.0f} s"]
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {
        "command": "bh-routing " + " ".join(args),
        "wall_s": wall,
        "exit_code": rc,
        "ok": rc == 0,
        "output_tail": tail,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def run(quick: bool, log) -> dict:
    rows = []
    variants = [["run", "--quick"]] if quick else [["run", "--quick"], ["run"]]
    for args in variants:
        row = time_command(args, timeout_s=1800)
        log(f"e2e {row['command']}: {row['wall_s']:.1f} s, exit code {row['exit_code']}")
        rows.append(row)
    return {"rows": rows}


def section(r: dict) -> str:
    """Section 5, end to end, from the results of benchmarks/run.py (a run without e2e says so)."""
    s = ["## 5. End to end\n"]
    if "e2e" not in r:
        s.append(
            "Not measured in this run (`--skip-e2e`, `--quick` or `--only`). "
            "`python benchmarks/run.py` times `bh-routing run --quick` and `bh-routing run` as subprocesses."
        )
        return "\n".join(s) + "\n"
    s.append(prose("e2e") + "\n")
    rows = [
        [
            f"`{x['command']}`",
            f"{x['wall_s']:.1f}",
            x["exit_code"],
            f"{x['load_before'][0]:.2f} / {x['load_after'][0]:.2f}",
            "<br>".join(x["output_tail"]).replace("|", "/"),
        ]
        for x in r["e2e"]["rows"]
    ]
    s.append(table(["command", "wall s", "exit code", "load average (1 min) before / after", "last lines of output"], rows))
    s.append("\n" + prose("e2e-load"))
    return "\n".join(s) + "\n"
