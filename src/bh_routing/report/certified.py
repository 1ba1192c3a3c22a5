"""Certified routing in the report: ``certified_frontier.png`` and the "Certified" section.

Both read the ``certify`` step's certificate (:func:`bh_routing.analysis.certify.certify`, with its
``frontier`` and ``held_out`` blocks); neither runs a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import plt, save_figure
from .figures import _ByFamily
from .registry import Figure, Section, register_figure, register_section

FIGURE = "certified_frontier.png"

CERT_COLORS = _ByFamily("color", {"bh-calibrated": "#9467bd"})
CERT_NAMES = _ByFamily("label", {"topk": "Top-k", "bh": "BH, empirical null", "bh-calibrated": "BH, calibrated null"})
RISK_NAMES = {"top1": "top-1 disagreement with the unpatched model (share of tokens)",
              "loss": "loss increase over the unpatched model (nats/token, clipped)"}


def certified_frontier_figure(cert: dict, path: Path) -> Path:
    """Left: certified mean experts per token against ε, per family (δ fixed). Right: at the
    certificate's ε, each grid point's empirical risk and (1 − δ/F) upper bound against its mean k."""
    top_k = cert["model"]["top_k"]
    fr = cert["frontier"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    eps = np.asarray(fr["epsilon"])
    for fam, ks in fr["families"].items():
        # nothing certified: the user keeps the model's own routing (top-K), drawn as a hollow marker
        y = np.array([top_k if k is None else k for k in ks], dtype=float)
        none = np.array([k is None for k in ks])
        color = CERT_COLORS.get(fam)
        ax.step(eps, y, where="post", color=color, label=CERT_NAMES.get(fam, fam))
        ax.plot(eps[~none], y[~none], "o", ms=4, color=color, zorder=4)  # certified points drawn over the hollow ones
        ax.plot(eps[none], y[none], "o", ms=7, mfc="white", color=color, zorder=3)
    ax.axhline(top_k, ls="--", color="black", lw=1, label=f"the model's top-{top_k}")
    ax.axvline(cert["epsilon"], ls=":", color="gray", lw=1, label=f"ε = {cert['epsilon']:g} (this certificate)")
    ax.set_xlabel(f"ε: certified bound on the {cert['risk']} risk", fontsize=11)
    ax.set_ylabel("certified mean experts per token", fontsize=11)
    ax.set_title(f"Fewest experts certified at level ε (δ = {fr['delta']:g}, n = {cert['n_units']} {cert.get('unit', 'sequence')}s; "
                 "○ none certified: top-K)", fontsize=11)
    shown = [k for ks in fr["families"].values() for k in ks if k is not None] or [top_k]
    ax.set_ylim(max(0.0, np.floor(min(shown)) - 0.5), top_k + 0.25)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower left")
    ax = axes[1]
    for fam, entry in cert["families"].items():
        pts = [p for p in entry["grid"] if p["measured"]]
        k = [p["mean_k"] for p in pts]
        color = CERT_COLORS.get(fam)
        ax.plot(k, [p["risk_mean"] for p in pts], ls="-", marker=".", color=color, alpha=0.5)
        ax.plot(k, [p["upper_bound"] for p in pts], ls="--", marker="^", ms=4, color=color,
                label=f"{CERT_NAMES.get(fam, fam)}: upper bound")
        chosen = entry["chosen"]
        if chosen is not None:
            p = entry["grid"][chosen]
            ax.plot([p["mean_k"]], [p["upper_bound"]], marker="*", ms=14, color=color, mec="black")
    ax.axhline(cert["epsilon"], ls=":", color="gray", lw=1, label=f"ε = {cert['epsilon']:g}")
    ax.set_xlabel("mean experts per token (calibration)", fontsize=11)
    ax.set_ylabel(f"{cert['risk']} risk", fontsize=11)
    ax.set_title("Empirical risk (solid) and its 1 − δ/F bound (dashed); ★ chosen", fontsize=12)
    ax.set_ylim(0, min(1.0, max(3 * cert["epsilon"], 0.05)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(
        f"Certified routing (Learn-then-Test, Hoeffding–Bentkus, fixed sequence per family, δ/{len(cert['families'])} "
        f"each) · {cert['model']['name']} · risk: {RISK_NAMES[cert['risk']]}",
        fontsize=11,
    )
    fig.tight_layout()
    return save_figure(fig, Path(path))


def certified_section(cert: dict, *, figure: str | None = FIGURE) -> list[str]:
    """The "Certified" Markdown section: per family the certified setting and experts per token,
    which family is cheapest under the same guarantee, and the held-out check."""
    top_k = cert["model"]["top_k"]
    risk_name = RISK_NAMES[cert["risk"]]
    units = f"{cert.get('unit', 'sequence')}s"
    where = (f"{cert['n_units']} calibration documents ({cert['n_sequences']} windows, their first {cert['seq_len']} "
             "tokens; a document's risk is the mean over its windows)" if units == "documents" else
             f"{cert['n_units']} calibration sequences (their first {cert['seq_len']} tokens)")
    lines = [
        "## Certified",
        "",
        f"Learn-then-Test (Angelopoulos et al. 2025): on {where}, "
        f"disjoint from the evaluation text, each family's grid was tested from its "
        f"safest setting down (Hoeffding–Bentkus p-values, fixed-sequence testing at δ/{len(cert['families'])} = "
        f"{cert['delta_per_family']:.3g} per family). Risk: {risk_name}. Guarantee: with probability at least "
        f"1 − δ = {1 - cert['delta']:.3g}, every certified setting has mean risk ≤ ε = {cert['epsilon']:g} on new "
        f"{units} from the same distribution.",
        "",
        "| family | certified setting | experts/token | compute vs top-%d | calibration risk | upper bound "
        "| next setting (not certified): risk / bound |" % top_k,
        "|---|---|---|---|---|---|---|",
    ]
    for fam, entry in cert["families"].items():
        p = None if entry["chosen"] is None else entry["grid"][entry["chosen"]]
        nxt = entry["grid"][entry["num_certified"]] if entry["num_certified"] < len(entry["grid"]) else None
        nxt_cell = "–" if nxt is None or not nxt["measured"] else (
            f"{nxt['label']}: {nxt['risk_mean']:.4f} / {nxt['upper_bound']:.4f}")
        if p is None:
            lines.append(f"| {CERT_NAMES.get(fam, fam)} | none | – | – | – | – | {nxt_cell} |")
        else:
            lines.append(
                f"| {CERT_NAMES.get(fam, fam)} | {p['label']} | {p['mean_k']:.3f} | {100 * p['compute_fraction']:.1f}% | "
                f"{p['risk_mean']:.4f} | {p['upper_bound']:.4f} | {nxt_cell} |"
            )
    lines += ["", "A setting is certified when its upper bound is at most ε and every safer setting of its family "
                  f"is certified too (fixed-sequence testing); with more calibration {units} the bounds tighten."]
    if cert.get("infeasible"):
        lines += ["", f"**Nothing can be certified at ε = {cert['epsilon']:g}, δ = {cert['delta']:g} with "
                      f"{cert['n_units']} {units}**: {cert['infeasible']}. The bounds above show how far each setting is; "
                      "the frontier below shows what these units certify at larger ε."]
    docs = cert.get("calibration_documents")
    if docs is not None and cert.get("unit", "sequence") == "sequence" and docs < cert["n_units"]:
        lines += ["", f"Caveat: the {cert['n_units']} calibration sequences come from {docs} documents, and sequences "
                      "of one document are not independent; the bound treats them as exchangeable units, so it is "
                      "optimistic for new documents (certifying over documents needs more of them)."]
    lines.append("")
    best = cert.get("best_family")
    if best is None:
        lines.append(f"No family has a certified setting at ε = {cert['epsilon']:g}, δ = {cert['delta']:g}.")
    else:
        p = cert["families"][best]["grid"][cert["families"][best]["chosen"]]
        ks = sorted((e["grid"][e["chosen"]]["mean_k"], f) for f, e in cert["families"].items() if e["chosen"] is not None)
        tied = [f for k, f in ks if abs(k - ks[0][0]) < 1e-9]
        if len(tied) > 1:
            lines.append(f"Cheapest under the same guarantee: a tie between {', '.join(CERT_NAMES.get(f, f) for f in tied)} "
                         f"at {ks[0][0]:.3f} experts per token.")
        else:
            cut = 100 * (1 - p["mean_k"] / top_k)
            lines.append(f"Cheapest under the same guarantee: **{CERT_NAMES.get(best, best)}**, {p['label']}, "
                         f"{p['mean_k']:.3f} experts per token ({cut:.1f}% fewer than top-{top_k}).")
    held = cert.get("held_out")
    if held and held.get("families"):
        lines += ["", f"Held-out check ({held['n_sequences']} evaluation sequences not used to certify):", "",
                  "| family | setting | held-out risk | sequences above ε | experts/token | meets ε |", "|---|---|---|---|---|---|"]
        for fam in cert["families"]:
            h = held["families"].get(fam)
            if h is None:
                lines.append(f"| {CERT_NAMES.get(fam, fam)} | none certified | – | – | – | – |")
                continue
            lines.append(f"| {CERT_NAMES.get(fam, fam)} | {h['label']} | {h['risk_mean']:.4f} | "
                         f"{100 * h['share_above_epsilon']:.1f}% | {h['mean_k']:.3f} | {'yes' if h['meets_epsilon'] else '**no**'} |")
    if cert["risk"] == "loss":
        hi = max((q["clip_high"] or 0.0) for e in cert["families"].values() for q in e["grid"])
        lines += ["", f"The loss risk is clipped to [0, {cert['loss_bound']:g}] nats/token; the upper clip bound on at most "
                      f"{100 * hi:.1f}% of calibration sequences at any grid point."]
    fr = cert.get("frontier")
    if fr:
        fams = list(fr["families"])
        lines += ["", f"Certified experts per token at other ε (same δ = {fr['delta']:g}, same {units}; – none certified):", "",
                  "| ε | " + " | ".join(CERT_NAMES.get(f, f) for f in fams) + " |", "|---" * (len(fams) + 1) + "|"]
        for i, e in enumerate(fr["epsilon"]):
            cells = ["–" if fr["families"][f][i] is None else f"{fr['families'][f][i]:.3f}" for f in fams]
            lines.append(f"| {e:g} | " + " | ".join(cells) + " |")
    if figure:
        lines += ["", f"![certified frontier]({figure})"]
    return lines + [""]


def _section(res: dict, figures: list[str]) -> list[str]:
    cert = res["steps"]["certify"]
    if "skipped" in cert:
        return ["## Certified", "", f"No certificate in this run: {cert['skipped']}.", ""]
    return certified_section(cert, figure=FIGURE if FIGURE in figures else None)


register_figure(Figure(FIGURE, lambda res, path: certified_frontier_figure(res["steps"]["certify"], path),
                       needs=("certified",)))
register_section(Section("certify", _section, needs=("certify",), order=92))
