"""Writing a run's outputs from its results dict: JSON, CSV, the registered figures, RESULTS.md."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..analysis.outputs import (
    COMPARATIVE_CSV, REPORT_MD, RESULTS_JSON, RunError, atomic_write_text, check_writable, json_clean, read_results,
)
from .markdown import render
from .registry import FIGURES, available

CSV_FIELDS = ["prompt_label", "prompt", "tokens", "topk_mean_experts", "bh_mean_experts", "expert_reduction_pct",
              "topk_loss", "bh_loss", "loss_change"]


def comparative_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


#: What the report reads of a results document besides its steps and derived summaries.
NEEDED = {
    "config": ("seed",),
    "environment": ("torch", "transformers", "bh_routing"),
    "model": ("name", "model_class", "num_moe_layers", "num_experts", "top_k", "norm_topk_prob", "total_params",
              "active_params", "dtype", "device", "experts_implementation"),
}


def load_results(folder: str | Path) -> dict:
    """The results document of a finished run (a one-line RunError when missing, damaged or incomplete)."""
    doc = read_results(folder)
    for part, keys in NEEDED.items():
        missing = [k for k in keys if not isinstance(doc.get(part), dict) or k not in doc[part]]
        if missing:
            raise RunError(f"{Path(folder) / RESULTS_JSON} is incomplete: {part} lacks {', '.join(missing)}")
    if not isinstance(doc.get("eval_domains"), list):
        raise RunError(f"{Path(folder) / RESULTS_JSON} is incomplete: no eval_domains list")
    return doc


def draw_all(res: dict, out: Path) -> list[Path]:
    """Every registered figure whose data is in ``res``."""
    have = available(res)
    return [fig.draw(res, out / name) for name, fig in FIGURES.items() if all(n in have for n in fig.needs)]


def write_report(results: dict, out: str | Path, *, figures: bool = True) -> list[Path]:
    """Write JSON, CSV (when there are prompt rows), the figures and RESULTS.md into ``out``."""
    out = Path(out)
    check_writable(out)  # a read-only folder: one line (RunError), not a traceback halfway through
    out.mkdir(parents=True, exist_ok=True)
    results = json_clean(results)
    written = [atomic_write_text(out / RESULTS_JSON, json.dumps(results, indent=1, ensure_ascii=False))]
    if "comparative" in results["steps"]:
        written.append(atomic_write_text(out / COMPARATIVE_CSV, comparative_csv(results["steps"]["comparative"])))
    drawn = draw_all(res=results, out=out) if figures else []
    written += drawn
    written.append(atomic_write_text(out / REPORT_MD, render(results, [p.name for p in drawn])))
    return written
