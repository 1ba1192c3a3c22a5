"""Writing a run's report from its results dict: the CSV, the registered figures, RESULTS.md.

The results JSON itself is written and read by :mod:`bh_routing.study.results` (one writer, one reader).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..core.files import atomic_write_text
from .markdown import render
from .registry import FIGURES, available

COMPARATIVE_CSV = "comparative_results.csv"
REPORT_MD = "RESULTS.md"
CSV_FIELDS = ["prompt_label", "prompt", "tokens", "topk_mean_experts", "bh_mean_experts", "expert_reduction_pct",
              "topk_loss", "bh_loss", "loss_change"]


def comparative_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def draw_all(res: dict, out: Path) -> list[Path]:
    """Every registered figure whose data is in ``res``."""
    have = available(res)
    return [fig.draw(res, out / name) for name, fig in FIGURES.items() if all(n in have for n in fig.needs)]


def write_report(results: dict, out: str | Path, *, figures: bool = True) -> list[Path]:
    """Write the CSV (when there are prompt rows), the figures and RESULTS.md into the folder ``out``
    (which exists: :func:`bh_routing.study.results.export` checks and creates it)."""
    out = Path(out)
    written = []
    if "comparative" in results["steps"]:
        written.append(atomic_write_text(out / COMPARATIVE_CSV, comparative_csv(results["steps"]["comparative"])))
    drawn = draw_all(res=results, out=out) if figures else []
    written += drawn
    written.append(atomic_write_text(out / REPORT_MD, render(results, [p.name for p in drawn])))
    return written
