"""Reports from saved results: figures, CSV, JSON and RESULTS.md (never touches a model)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from .figures import FIGURES, draw_all
from .markdown import fmt, render

RESULTS_JSON = "bh_routing_results.json"
COMPARATIVE_CSV = "comparative_results.csv"
REPORT_MD = "RESULTS.md"
CSV_FIELDS = ["prompt_label", "prompt", "tokens", "topk_mean_experts", "bh_mean_experts", "expert_reduction_pct",
              "topk_loss", "bh_loss", "loss_change"]


def _atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _clean(x):
    """JSON without NaN/inf (they become null)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def comparative_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def load_results(folder: str | Path) -> dict:
    path = Path(folder) / RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS_JSON} in {folder}: run `bh-routing run` first")
    return json.loads(path.read_text(encoding="utf-8"))


def write_report(results: dict, out: str | Path, *, figures: bool = True) -> list[Path]:
    """Write JSON, CSV (when there are prompt rows), the figures and RESULTS.md into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = _clean(results)
    written = [_atomic(out / RESULTS_JSON, json.dumps(results, indent=1, ensure_ascii=False))]
    if "comparative" in results["steps"]:
        written.append(_atomic(out / COMPARATIVE_CSV, comparative_csv(results["steps"]["comparative"])))
    drawn = draw_all(results, out) if figures else []
    written += drawn
    written.append(_atomic(out / REPORT_MD, render(results, [p.name for p in drawn])))
    return written


__all__ = ["COMPARATIVE_CSV", "FIGURES", "REPORT_MD", "RESULTS_JSON", "fmt", "load_results", "render", "write_report"]
