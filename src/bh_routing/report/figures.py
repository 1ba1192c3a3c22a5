"""The 8 figures of the original notebook, drawn from a results dict only (never from a model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis.evaluate import document_loss, document_mean_k
from ..core.families import RANK_BASELINES, StrategySpecError, get_family
from .base import plt, save_figure
from .registry import Figure, register_figure

_NULLS = {"empirical": "empirical null", "calibrated": "calibrated null", "standardized": "standardised null"}


class _ByFamily(dict):
    """Colour or name of a family in the figures: BH's variants (and top-k's name) fixed here, every
    other family's from the table of families (its class's ``color`` / ``label``)."""

    def __init__(self, attr: str, fixed: dict) -> None:
        super().__init__(fixed)
        self.attr = attr

    def __missing__(self, family: str) -> str:
        base, _, reference = family.partition(":")  # "<family>:<reference>": a published setting
        try:
            value = getattr(get_family(base if reference and "." not in base else family), self.attr)
        except StrategySpecError:
            raise KeyError(family) from None
        return f"{value} ({reference})" if reference and self.attr == "label" and "." not in base else value


COLORS = _ByFamily("color", {
    "bh-empirical": "#d62728", "bh-calibrated": "#9467bd", "bh-standardized": "#ff7f0e",
    "bh-calibrated-router": "#8c564b", "bh-calibrated-router-wide": "#e377c2", "bh-empirical-router": "#bcbd22",
    "bh-standardized-router": "#17becf", "bh-calibrated-wide": "#7f7f7f", "bh-empirical-wide": "#aec7e8",
    "bh-standardized-wide": "#ffbb78", "bh-empirical-router-wide": "#98df8a", "bh-standardized-router-wide": "#c5b0d5"})
NAMES = _ByFamily("label", {
    "topk": "Top-k (k = 1…K)",
    **{f"bh-{m}{sel}{wide}": f"BH, {null}" + (", router's experts" if sel else "") + (", max_k 2K" if wide else "")
       for m, null in _NULLS.items() for sel in ("", "-router") for wide in ("", "-wide")}})


def bh_family(res: dict) -> str:
    """The family of the run's reported BH variant ("bh-<variant>"); while ``bh_pvalues`` is still
    "auto" (its choosing step not run), the first BH family of the α sweep."""
    fam = "bh-" + res["config"]["bh_pvalues"]
    swept = [r["family"] for r in res["steps"].get("alpha", [])]
    return fam if fam in COLORS and (fam in swept or not swept) else (swept[0] if swept else "bh-empirical")


TEMPERATURE_NOTE = (
    "Temperature T spreads each token's logits about their median by 1/T (= softmax temperature).\n"
    "Empirical and standardised nulls: z-scores are scale-free, so T has no effect (tested; not swept).\n"
    "Calibrated null: T < 1 pushes logits away from the median → more experts; T > 1 pulls them in → mostly fewer,\n"
    "but below-median logits move up and can look extreme for experts whose null sits low (not monotone)."
)


def model_line(res: dict) -> str:
    """The model in one line, for a figure's title."""
    m = res["model"]
    return f"{m['name']} · {m['num_moe_layers']} MoE layers × {m['num_experts']} experts, top-{m['top_k']}"


def _by_family(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["family"], []).append(r)
    return out


def hist_quantile(hist: list[int], q: float) -> int:
    """The q-quantile of k from a histogram of k = 0..W (the smallest k with cumulative share >= q)."""
    c = np.cumsum(hist, dtype=float)
    return int(np.searchsorted(c / c[-1], q - 1e-12)) if c[-1] else 0


def _k_range(res: dict, step: str, rows: list[dict]) -> np.ndarray:
    """(2, n) error-bar lengths from each row's mean k to the 10th and 90th percentiles of its k.

    Quantiles of the per-(token, layer) k from the step's histograms (matched by label): unlike
    mean ± sd, they stay within [min_k, max_k] (k is never below min_k).
    """
    hists = {r["label"]: r["k_histogram"] for r in res["steps"][step]}
    lo = np.array([hist_quantile(hists[r["label"]], 0.1) for r in rows], float)
    hi = np.array([hist_quantile(hists[r["label"]], 0.9) for r in rows], float)
    m = np.array([r["mean_k"] for r in rows])
    return np.vstack([np.clip(m - lo, 0, None), np.clip(hi - m, 0, None)])


def alpha_sensitivity(res: dict, path: Path) -> Path:
    rows = res["derived"]["alpha_sensitivity"]
    k = res["model"]["top_k"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for fam, rs in _by_family(rows).items():
        a = np.array([r["param"] for r in rs])
        m = np.array([r["mean_k"] for r in rs])
        axes[0].errorbar(a, m, yerr=_k_range(res, "alpha", rs), marker="o", capsize=3, color=COLORS[fam], label=NAMES[fam])
        axes[1].plot(a, [r["reduction_pct"] for r in rs], marker="o", color=COLORS[fam], label=NAMES[fam])
    axes[0].axhline(k, ls="--", color="black", lw=1, label=f"top-{k} baseline")
    axes[0].axhline(res["config"]["min_k"], ls=":", color="gray", lw=1, label=f"min_k = {res['config']['min_k']}")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xlabel("α (BH level, log scale)", fontsize=12)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    axes[0].set_ylabel("experts per token (mean; bars: 10th–90th percentile)", fontsize=11)
    axes[0].set_title("Experts per token vs α", fontsize=13, fontweight="bold")
    axes[1].axhline(0, color="black", lw=1)
    axes[1].set_ylabel(f"reduction vs top-{k} (%)", fontsize=12)
    axes[1].set_title("Expert reduction vs α", fontsize=13, fontweight="bold")
    # distribution of k for the report's method
    runs = [r for r in res["steps"]["alpha"] if r["family"] == bh_family(res)]
    width = max(len(r["k_histogram"]) for r in runs)
    share = np.array([np.pad(r["k_histogram"], (0, width - len(r["k_histogram"]))) for r in runs], float)
    share /= share.sum(axis=1, keepdims=True)
    first = min(res["config"]["min_k"], int(np.flatnonzero(share.sum(axis=0))[0]))  # no always-empty k = 0 column
    share = share[:, first:]  # (runs, k = first..W)
    im = axes[2].imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                        extent=(first - 0.5, width - 0.5, len(runs) - 0.5, -0.5))
    axes[2].set_yticks(range(len(runs)), [f"{r['param']:g}" for r in runs])
    axes[2].set_xticks(range(first, width))
    axes[2].set_xlabel("experts used k", fontsize=12)
    axes[2].set_ylabel("α", fontsize=12)
    axes[2].set_title(f"Distribution of k ({NAMES[bh_family(res)]})", fontsize=13, fontweight="bold")
    fig.colorbar(im, ax=axes[2], label="share of (token, layer) pairs")
    fig.suptitle(model_line(res), fontsize=10, y=1.02)
    return save_figure(fig, path)


def temperature_sensitivity(res: dict, path: Path) -> Path:
    rows = res["derived"]["temperature_sensitivity"]
    k = res["model"]["top_k"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for fam, rs in _by_family(rows).items():
        t = [r["param"] for r in rs]
        axes[0].errorbar(t, [r["mean_k"] for r in rs], yerr=_k_range(res, "temperature", rs), marker="o", capsize=3,
                         color=COLORS[fam], label=NAMES[fam])
        ppl = np.array([[r["ppl"], r["ppl_ci_low"], r["ppl_ci_high"]] for r in rs])
        axes[1].errorbar(t, ppl[:, 0], yerr=[ppl[:, 0] - ppl[:, 1], ppl[:, 2] - ppl[:, 0]], marker="o", capsize=3, color=COLORS[fam], label=NAMES[fam])
    axes[0].axhline(k, ls="--", color="black", lw=1, label=f"top-{k} baseline")
    axes[0].set_ylabel("experts per token (mean; bars: 10th–90th percentile)", fontsize=11)
    axes[0].set_title(f"Experts per token vs temperature (α = {res['config']['alpha']:g})", fontsize=13, fontweight="bold")
    axes[1].set_ylabel("held-out perplexity (95% t-interval over documents)", fontsize=12)
    axes[1].set_title("Perplexity vs temperature", fontsize=13, fontweight="bold")
    temps = sorted({r["param"] for r in rows})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.minorticks_off()
        ax.set_xlabel("temperature T (log scale)", fontsize=12)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.text(0.5, -0.16, TEMPERATURE_NOTE, ha="center", fontsize=9.5, family="monospace")
    fig.suptitle(model_line(res), fontsize=10, y=1.02)
    return save_figure(fig, path)


def token_level(res: dict, path: Path) -> Path:
    tl = res["steps"]["token_level"]
    k = res["model"]["top_k"]
    kinds = sorted(set(tl["kinds"]))
    cmap = plt.get_cmap("tab10")
    colors = {kind: cmap(i) for i, kind in enumerate(kinds)}
    n = len(tl["tokens"])
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * n + 2), 5))
    ax.bar(range(n), tl["mean_k"], color=[colors[x] for x in tl["kinds"]])
    ax.axhline(k, ls="--", color="black", lw=1, label=f"top-{k} baseline")
    labels = [repr(t)[1:-1] for t in tl["tokens"]]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=10, family="monospace")
    ax.set_ylabel("experts per token (mean over MoE layers)", fontsize=12)
    ax.set_xlabel("token", fontsize=12)
    s = tl["strategy"]
    ax.set_title(f"Experts per token: BH-{s['pvalues']} (α = {s['alpha']:g})", fontsize=13, fontweight="bold")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[kd]) for kd in kinds]
    ax.legend(handles + ax.get_legend_handles_labels()[0], kinds + [f"top-{k} baseline"], fontsize=9,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


MAX_PROMPT_BARS = 30  # more prompts than this: distributions instead of one bar pair per prompt


def _comparative_aggregated(res: dict, path: Path) -> Path:
    """Many prompts: the distribution over prompts of the expert reduction and of the loss change."""
    rows = res["steps"]["comparative"]
    k = res["model"]["top_k"]
    color = COLORS[bh_family(res)]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    for ax, key, xlabel in ((axes[0], "expert_reduction_pct", f"expert reduction of BH vs top-{k} (%)"),
                            (axes[1], "loss_change", "Δ loss, BH − top-k (nats per token)")):
        v = np.array([r[key] for r in rows], float)
        ax.hist(v, bins=min(40, max(10, len(v) // 10)), color=color, alpha=0.8)
        ax.axvline(0, color="black", lw=1)
        ax.axvline(v.mean(), color="red", lw=2, label=f"mean {v.mean():.3g}")
        ax.set_xlabel(xlabel, fontsize=12)
        ax.set_ylabel("prompts", fontsize=12)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Expert reduction per prompt", fontsize=13, fontweight="bold")
    axes[1].set_title("Loss change per prompt", fontsize=13, fontweight="bold")
    fig.suptitle(f"{model_line(res)}\n{len(rows)} prompts: distributions over prompts "
                 "(each prompt's numbers are in comparative_results.csv)", fontsize=10, y=1.04)
    return save_figure(fig, path)


def comparative(res: dict, path: Path) -> Path:
    rows = res["steps"]["comparative"]
    if len(rows) > MAX_PROMPT_BARS:
        return _comparative_aggregated(res, path)
    k = res["model"]["top_k"]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    axes[0].bar(x - 0.2, [r["topk_mean_experts"] for r in rows], 0.4, color=COLORS["topk"], label=f"top-{k}")
    axes[0].bar(x + 0.2, [r["bh_mean_experts"] for r in rows], 0.4, color=COLORS[bh_family(res)], label="BH")
    axes[0].set_ylabel("experts per token", fontsize=12)
    axes[0].set_title("Experts per token by prompt", fontsize=13, fontweight="bold")
    axes[1].bar(x - 0.2, [r["topk_loss"] for r in rows], 0.4, color=COLORS["topk"], label=f"top-{k}")
    axes[1].bar(x + 0.2, [r["bh_loss"] for r in rows], 0.4, color=COLORS[bh_family(res)], label="BH")
    axes[1].set_ylabel("next-token loss (nats per token)", fontsize=12)
    axes[1].set_title("Loss by prompt", fontsize=13, fontweight="bold")
    for ax in axes:
        ax.set_xticks(x, [r["prompt_label"] for r in rows], rotation=35, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle(model_line(res), fontsize=10, y=1.02)
    return save_figure(fig, path)


def utilization(res: dict, path: Path) -> Path:
    u = res["derived"]["utilization"]
    fig, axes = plt.subplots(2, 1, figsize=(14, 6.5), sharex=True)
    top = 0.0
    shares = {}
    for name in ("topk", "bh"):
        c = np.array(u[name]["expert_counts"], float)
        shares[name] = c / c.sum(axis=1, keepdims=True).clip(1)
        top = max(top, shares[name].max())
    for ax, name in zip(axes, ("topk", "bh")):
        im = ax.imshow(shares[name], aspect="auto", cmap="magma", vmin=0, vmax=top)
        ax.set_yticks(range(shares[name].shape[0]))
        ax.set_ylabel("MoE layer", fontsize=12)
        ax.set_title(
            f"{u[name]['label']}: share of routed pairs per expert · CV {u[name]['mean_cv']:.2f}, "
            f"normalised entropy {u[name]['mean_normalized_entropy']:.3f}",
            fontsize=12, fontweight="bold",
        )
        fig.colorbar(im, ax=ax, label="share within layer")
    axes[1].set_xlabel("expert", fontsize=12)
    return save_figure(fig, path)


def statistical(res: dict, path: Path) -> Path:
    st = res["derived"]["statistics"]
    s = st["documents"]
    bh = next(r for r in res["steps"]["alpha"] if r["label"] == s["a"])
    tk = next(r for r in res["steps"]["frontier"] if r["label"] == s["b"])
    docs = res.get("evaluation", {}).get("window_documents")
    unit = s["unit"]
    loss_bh, loss_tk = document_loss(bh, docs), document_loss(tk, docs)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    axes[0].boxplot([loss_tk, loss_bh], tick_labels=[tk["label"], bh["label"]])
    axes[0].set_ylabel(f"loss per token (nats), per {unit[:-1]}", fontsize=12)
    axes[0].set_title(f"Loss per {unit[:-1]}", fontsize=13, fontweight="bold")
    d = loss_bh - loss_tk
    axes[1].hist(d, bins=min(20, max(5, len(d) // 2)), color=COLORS[bh_family(res)], alpha=0.8)
    axes[1].axvline(0, color="black", lw=1)
    axes[1].axvline(s["mean_diff"], color="red", lw=2, label=f"mean {s['mean_diff']:.3g}")
    axes[1].axvspan(s["ci_low"], s["ci_high"], color="red", alpha=0.15, label="95% t-interval")
    p = s["t_pvalue"]
    axes[1].set_title(f"Loss difference BH − top-k (paired t p = {p:.3g})" if p is not None else "Loss difference BH − top-k", fontsize=12, fontweight="bold")
    axes[1].set_xlabel("Δ loss (nats per token)", fontsize=12)
    axes[1].set_ylabel(unit, fontsize=12)
    axes[1].legend(fontsize=9)
    red = st["expert_reduction_pct"]
    axes[2].hist(100 * (1 - document_mean_k(bh, docs) / res["model"]["top_k"]), bins=min(20, max(5, len(d) // 2)), color="#8c564b", alpha=0.8)
    axes[2].axvline(red["mean"], color="black", lw=2, label=f"mean {red['mean']:.1f}%")
    axes[2].axvspan(red["ci_low"], red["ci_high"], color="black", alpha=0.15, label="95% t-interval")
    axes[2].set_xlabel(f"expert reduction vs top-{res['model']['top_k']} (%)", fontsize=12)
    axes[2].set_ylabel(unit, fontsize=12)
    axes[2].set_title(f"Expert reduction per {unit[:-1]}", fontsize=13, fontweight="bold")
    axes[2].legend(fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(model_line(res), fontsize=10, y=1.02)
    return save_figure(fig, path)


def layers(res: dict, path: Path) -> Path:
    rows = res["derived"]["layers"]
    k = res["model"]["top_k"]
    fams = sorted({r["family"] for r in rows})
    fig, axes = plt.subplots(1, len(fams), figsize=(7 * len(fams), 4.8), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        rs = [r for r in rows if r["family"] == fam]
        cmap = plt.get_cmap("viridis")
        for i, r in enumerate(rs):
            ax.plot(range(len(r["mean_k_per_layer"])), r["mean_k_per_layer"], marker="o", color=cmap(i / max(1, len(rs) - 1)), label=f"α = {r['alpha']:g}")
        ax.axhline(k, ls="--", color="black", lw=1, label=f"top-{k}")
        ax.set_xlabel("MoE layer", fontsize=12)
        ax.set_ylabel("mean experts per token", fontsize=12)
        ax.set_title(f"Per-layer k: {NAMES[fam]}", fontsize=13, fontweight="bold")
        ax.set_xticks(range(len(rs[0]["mean_k_per_layer"])))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


def pareto(res: dict, path: Path) -> Path:
    rows = res["derived"]["frontier"] + res["derived"]["alpha_sensitivity"]
    k = res["model"]["top_k"]
    paired = all(r.get("ppl_ratio") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(17 if paired else 10, 6.5), squeeze=False)
    axes = axes[0]
    for fam, rs in _by_family(rows).items():
        rs = sorted(rs, key=lambda r: r["mean_k"])
        x = [r["mean_k"] for r in rs]
        # measured points are the markers; the thin dotted lines only join them (nothing measured between)
        marker = "o" if fam.startswith("bh") else "s" if fam in RANK_BASELINES else "*" if ":" in fam else "D"
        style = dict(marker=marker, ms=6, capsize=2, color=COLORS[fam], label=NAMES[fam],
                     lw=0.8, ls=":")
        y = np.array([[r["ppl"], r["ppl_ci_low"], r["ppl_ci_high"]] for r in rs])
        axes[0].errorbar(x, y[:, 0], yerr=[y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]], **style)
        if paired:
            y = 100 * (np.array([[r["ppl_ratio"], r["ratio_ci_low"], r["ratio_ci_high"]] for r in rs]) - 1)
            axes[1].errorbar(x, y[:, 0], yerr=[y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]], **style)
    ref = next((r for r in res["derived"]["frontier"] if r["family"] == "topk" and r["param"] == k), None)
    if ref:
        axes[0].axhline(ref["ppl"], ls="--", color="black", lw=1, label=f"top-{k} (the model)")
    axes[0].set_ylabel("held-out perplexity (95% t-interval over documents)", fontsize=12)
    axes[0].set_yscale("log")
    axes[0].set_title("Perplexity vs experts (lower-left is better)", fontsize=13, fontweight="bold")
    if paired:
        axes[1].axhline(0, ls="--", color="black", lw=1, label=f"top-{k} (the model)")
        axes[1].set_ylabel(f"perplexity change vs top-{k} (%), paired 95% CI", fontsize=12)
        axes[1].set_title(f"Paired: perplexity relative to top-{k} on the same documents", fontsize=13, fontweight="bold")
    for ax in axes:
        ax.set_xlabel("mean active experts per token (over tokens and MoE layers)", fontsize=12)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=9)
    fig.suptitle(model_line(res), fontsize=10, y=1.0)
    fig.text(0.5, -0.02, "Markers are measured settings; dotted lines only join neighbouring settings of one family "
             "(nothing was measured between them).", ha="center", fontsize=9.5)
    return save_figure(fig, path)


SEED = (  # the 8 figures of the original notebook: file name, function, the results they need
    ("alpha_sensitivity.png", alpha_sensitivity, ("alpha_sensitivity",)),
    ("temperature_sensitivity.png", temperature_sensitivity, ("temperature_sensitivity",)),
    ("token_level_analysis.png", token_level, ("token_level",)),
    ("comparative_analysis.png", comparative, ("comparative",)),
    ("expert_utilization_heatmap.png", utilization, ("utilization",)),
    ("statistical_analysis.png", statistical, ("statistics",)),
    ("layer_analysis.png", layers, ("layers",)),
    ("pareto_frontier.png", pareto, ("frontier", "alpha_sensitivity")),
)
SEED_FIGURES = tuple(name for name, _, _ in SEED)
for _name, _draw, _needs in SEED:
    register_figure(Figure(_name, _draw, _needs))
