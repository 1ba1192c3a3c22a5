"""The downstream-evaluation (lm-evaluation-harness) figure and RESULTS.md section, from saved results.

Reads ``results["steps"]["downstream"]`` as written by the ``downstream`` step
(:func:`bh_routing.analysis.downstream.evaluate_downstream`). Shown per task: groups (e.g. ``mmlu``)
and the tasks that belong to no group; the subtasks of a group stay in the JSON.
"""

from __future__ import annotations

import math
from pathlib import Path

from .base import fmt, plt, save_figure, table
from .registry import Figure, Section, register_figure, register_section

FIGURE_NAME = "downstream_accuracy.png"
_MARKERS = "osD^vP*Xh<>"
_COLORS = ["#444444", "#d62728", "#9467bd", "#1f77b4", "#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
_LABELS = {
    "acc": "accuracy",
    "acc_norm": "accuracy (length-normalised)",
    "exact_match": "exact match",
    "bits_per_byte": "bits per byte (lower is better)",
}


def _units(ds: dict) -> list[tuple[str, dict, str]]:
    """(name, entry, kind) for every group and every task outside a group, in the requested order."""
    out = []
    for spec in ds["tasks_requested"]:
        if spec in ds["groups"]:
            out.append((spec, ds["groups"][spec], "group"))
        out += [(n, t, "task") for n, t in ds["tasks"].items() if t["requested_as"] == spec and not t.get("group")]
    return out


def _primary(entry: dict) -> str | None:
    """The metric shown: accuracy where there is one, else bits per byte (rolling log-likelihood)."""
    metrics = next(iter(entry["strategies"].values()))["metrics"]
    for m in ("acc", "acc_norm", "exact_match", "bits_per_byte"):
        if metrics.get(m) is not None:
            return m
    return None


def _n(ds: dict, name: str, entry: dict, kind: str) -> int:
    if kind == "task":
        return entry["n"]
    return sum(ds["tasks"][t]["n"] for t in entry["tasks"])


def _strategy_label(ds: dict, s: str) -> str:
    return f"{s} (baseline)" if s == ds.get("baseline") else s


def figure(res: dict, path: Path) -> Path:
    """Task score vs mean active experts per token: one marker per strategy, one panel per task."""
    ds = res["steps"]["downstream"]
    units = [(n, e, k, _primary(e)) for n, e, k in _units(ds)]
    units = [u for u in units if u[3] is not None]
    cols = min(3, max(1, len(units)))
    rows = max(1, math.ceil(len(units) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.4 * rows), squeeze=False)
    strategies = list(ds["strategies"])
    for ax, (name, entry, kind, metric) in zip(axes.flat, units):
        for i, s in enumerate(strategies):
            r = entry["strategies"][s]
            y, err = r["metrics"].get(metric), r["metrics"].get(f"{metric}_stderr")
            x = r["mean_experts_per_token"]
            if y is None or x is None:
                continue
            ax.errorbar(
                [x], [y], yerr=None if err is None else [err], fmt=_MARKERS[i % len(_MARKERS)], ms=9, capsize=4,
                color=_COLORS[i % len(_COLORS)], label=_strategy_label(ds, s),
            )
        ax.set_xlabel("mean active experts per token", fontsize=11)
        ax.set_ylabel(_LABELS.get(metric, metric) + (" ± lm-eval stderr" if metric != "bits_per_byte" else ""), fontsize=11)
        ax.set_title(f"{name} ({kind}, n = {_n(ds, name, entry, kind)})", fontsize=12, fontweight="bold")
        ax.set_xlim(left=0, right=max(ds.get("model_top_k") or 1, ax.get_xlim()[1]) * 1.08)
        if metric in _LABELS and metric != "bits_per_byte":
            ax.set_ylim(-0.02, 1.02)  # accuracies on their whole scale
        else:  # at least ±1% around the values, so that rounding noise does not look like an effect
            lo, hi = ax.get_ylim()
            mid, half = (lo + hi) / 2, max((hi - lo) / 2, 0.01 * abs((lo + hi) / 2))
            ax.set_ylim(mid - half, mid + half)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")
    for ax in list(axes.flat)[len(units):]:
        ax.set_visible(False)
    if not units:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "no accuracy-type metric in these tasks", ha="center", va="center")
        axes.flat[0].set_axis_off()
    model = res.get("model", {})
    title = "Downstream evaluation (lm-evaluation-harness): task score vs active experts"
    sub = f"{model.get('name', '?')} · top-{ds.get('model_top_k')} · lm-eval {ds.get('lm_eval_version')}"
    if ds.get("limit") is not None:
        sub += f" · limit {ds['limit']} documents per task"
    fig.suptitle(f"{title}\n{sub}", fontsize=12, y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)


def _pm(metrics: dict, m: str) -> str:
    v, e = metrics.get(m), metrics.get(f"{m}_stderr")
    if v is None:
        return "n/a"
    return f"{fmt(v)} ± {fmt(e)}" if e is not None else fmt(v)


def markdown(res: dict) -> str:
    """The "Downstream evaluation" section of RESULTS.md."""
    ds = res["steps"]["downstream"]
    base = ds.get("baseline")
    out = ["## Downstream evaluation (lm-evaluation-harness)", ""]
    setting = [f"lm-eval {ds.get('lm_eval_version')}", f"batch size {ds['batch_size']}", f"seed {ds['seed']}"]
    if ds.get("limit") is not None:
        setting.append(f"**limit {ds['limit']} documents per task** (a subset, not the full benchmark)")
    if ds.get("shard"):
        setting.append(f"**shard {ds['shard']['rank']} of {ds['shard']['world_size']} only** (merge the shards with "
                       "`bh_routing.analysis.downstream.merge_downstream`)")
    if ds.get("merged_from"):
        setting.append(f"merged from {ds['merged_from']} shards")
    out += [
        "Each routing strategy scored by EleutherAI's lm-evaluation-harness with the model patched "
        f"({', '.join(setting)}). Mean experts per token: counted by the recorder over every token the harness "
        "ran through the model for that task.",
        "Paired tests against the baseline "
        f"**{base}**, document by document: exact McNemar test (binomial test of the documents right under only one of the "
        "two) for accuracy; paired t-test and Wilcoxon on per-document log-likelihood for rolling log-likelihood tasks. "
        f"Significance level {0.05:g}, no correction for the number of tests."
        if base else "No top-k strategy was evaluated, so there is no baseline and no paired test.",
        "",
        f"![downstream]({FIGURE_NAME})",
        "",
    ]
    if ds.get("batch_size", 1) > 1:
        out += [f"Batch size {ds['batch_size']}: lm-eval calls the model without an attention mask, so the right-padding "
                "positions of each batch are routed and counted in the mean experts per token (they do not change the scores).", ""]
    strategies = list(ds["strategies"])
    for name, entry, kind in _units(ds):
        n = _n(ds, name, entry, kind)
        if kind == "group":
            otype = "group of " + ", ".join(entry["tasks"]) if len(entry["tasks"]) <= 6 else f"group of {len(entry['tasks'])} tasks"
        else:
            otype = entry["output_type"]
        out += [f"### {name} ({otype}; n = {n})", ""]
        metrics = next(iter(entry["strategies"].values()))["metrics"]
        if kind == "task" and entry["output_type"] == "loglikelihood_rolling":
            cols = [m for m in ("word_perplexity", "byte_perplexity", "bits_per_byte") if m in metrics]
            header = ["strategy", "mean experts/token"] + [m.replace("_", " ") for m in cols]
            rows = [[_strategy_label(ds, s), entry["strategies"][s]["mean_experts_per_token"]]
                    + [entry["strategies"][s]["metrics"].get(m) for m in cols] for s in strategies]
        else:
            cols = [m for m in ("acc", "acc_norm", "exact_match") if m in metrics]
            header = ["strategy", "mean experts/token"] + [f"{_LABELS.get(m, m)} ± stderr" for m in cols]
            rows = [[_strategy_label(ds, s), entry["strategies"][s]["mean_experts_per_token"]]
                    + [_pm(entry["strategies"][s]["metrics"], m) for m in cols] for s in strategies]
        out += [table(header, rows), ""]
        for t in entry.get("paired", []):
            label = "**significant**" if t["significant"] else "no verdict" if t["decision"] == "too few documents" else "not significant"
            out.append(f"- {label}: {t['verdict']}")
        if entry.get("paired"):
            out.append("")
    return "\n".join(out).rstrip() + "\n"


register_figure(Figure(FIGURE_NAME, figure, ("downstream",)))
register_section(Section("downstream", lambda res, figures: [markdown(res), ""], ("downstream",), 95))
