"""The run's ``fdr_oracle`` step: every BH variant and α against the oracle, the baselines at the
same mean k, verdicts with Holm-adjusted paired tests over documents."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...core import BH
from ...core.families import RANK_BASELINES
from ..settings import RoutingSettings, parse_variant, setting_label
from ..stats import adjust_family, mean_ci, paired_comparison
from .baselines import Ranking, matched
from .nulls import null_rejection_rates
from .record import TAU, TAUS, OracleData, record
from .selection import MemoCalibration, per_doc, per_layer, per_sequence, per_sequence_taus, select, summarize

BASELINES = RANK_BASELINES


_VS_ALPHA = {"lower": "below α", "higher": "above α: α does not bound it",
             "no significant difference": "not significantly different from α"}
_VS_BASELINE = {"lower": "cleaner than", "higher": "less clean than", "no significant difference": "no cleaner than"}


def _against_baselines(row: dict) -> str:
    """How a setting's selections compare with each baseline mixed to its mean k, joined by "; "."""
    parts = []
    for fam, b in row["baselines"].items():
        if b is None:
            parts.append(f"{fam} cannot reach that mean k")
            continue
        d = b["fdp_diff"]
        if d["decision"] not in _VS_BASELINE:  # too few documents
            parts.append(f"not compared with {fam} ({d['decision']})")
            continue
        parts.append(f"{_VS_BASELINE[d['decision']]} {fam} (ΔFDP {d['mean_diff']:+.3g}, 95% CI {d['ci_low']:.3g} to "
                     f"{d['ci_high']:.3g})")
    return "; ".join(parts)


def _verdict(row: dict) -> str:
    """One plain sentence: is FDP <= alpha, and are BH's selections cleaner than the matched baselines'?"""
    fdp, vs = row["fdp"], row["fdp_vs_alpha"]
    head = f"{row['label']}: FDP {fdp['mean']:.3g} (95% CI {fdp['ci_low']:.3g} to {fdp['ci_high']:.3g}), "
    if vs["decision"] == "too few documents":
        return head + f"α = {row['alpha']:g}, mean k {row['mean_k']:.2f}: too few documents for a verdict."
    return (head + f"{_VS_ALPHA[vs['decision']]} (α = {row['alpha']:g}); at its mean k {row['mean_k']:.2f} its "
            "selections are " + _against_baselines(row) + ".")


def _verdict_other(row: dict) -> str:
    """The sentence of a family that is not BH: its FDP, and against the baselines at its mean k (no α to test)."""
    fdp = row["fdp"]
    return (f"{row['label']}: FDP {fdp['mean']:.3g} (95% CI {fdp['ci_low']:.3g} to {fdp['ci_high']:.3g}); at its mean k "
            f"{row['mean_k']:.2f} its selections are " + _against_baselines(row) + ".")


def fdr_step(data: OracleData, strategies: list[tuple[str, float, BH]], *, documents: list[str] | None = None,
             tau: float = TAU, taus=TAUS, baselines=BASELINES, min_k: int = 1, max_k: int | None = None,
             null_pvalues: dict[str, Callable[[int, torch.Tensor], torch.Tensor]] | None = None,
             others: list | None = None) -> dict:
    """The ``fdr_oracle`` results: per BH setting FDP and power with intervals, baselines at matched k.

    Parameters
    ----------
    data : OracleData
        From :func:`record` (the model routing by its own top-k).
    strategies : list of (variant name, alpha, BH), e.g. from :func:`bh_variants`
    documents : list of str, optional
        Each sequence's document id: intervals and tests are over documents
        (:mod:`bh_routing.analysis.stats`); None means every sequence is its own document.
    tau, taus : float, sequence of float
        The threshold of "needed" and the sensitivity grid (point estimates only).
    baselines : families compared at BH's mean k; min_k, max_k: their clamps (max_k None: the model's k)
    null_pvalues : {method: (layer, logits) -> p-values}, optional
        Methods whose null rejection rates P(p <= a | e not in top-k) to report.
    others : list of (family, knob value, Strategy, label), optional
        Families other than BH (the entropy ladder, a user's rule): their FDP and power, and
        against the baselines at their mean k, under ``results["others"]`` (in the baseline family).

    Notes
    -----
    Two families of tests, each Holm-adjusted (:func:`~bh_routing.analysis.stats.adjust_family`):
    FDP against α (one per BH setting) and BH's FDP (all selected) against each baseline's at the
    same mean k. Power differences are reported with intervals, without a verdict.
    """
    others = others or []
    ranking = Ranking(data, min_k=min_k, max_k=max_k or data.top_k)
    cache: dict = {}
    rows, vs_alpha, vs_baselines = [], [], []

    def measured(strategy, label: str) -> tuple[dict, dict]:
        """FDP and power of a strategy's selections, and against each baseline at its mean k."""
        sel = select(data, strategy, pvalue_cache=cache)
        doc = per_doc(per_sequence(data, sel, tau), documents)
        row = {"label": label, **summarize(doc)}
        row["mean_k"] = row["mean_k"]["mean"]
        row["per_layer"] = per_layer(data, sel, tau)
        row["tau_sensitivity"] = {
            f"{t:g}": {k: float(v.mean()) for k, v in values.items() if k in ("fdp", "fdp_all", "power")}
            for t, values in zip(taus, per_sequence_taus(data, sel, taus))
        }
        row["baselines"] = {}
        for fam in baselines:
            m = matched(ranking, fam, row["mean_k"], tau=tau)
            if m is None:
                row["baselines"][fam] = None
                continue
            base = per_doc({k: v for k, v in m.items() if k != "settings"}, documents)
            names = (label, f"{fam} at the same mean k")
            row["baselines"][fam] = {
                "settings": m["settings"],
                "fdp": mean_ci(base["fdp_all"]),
                "power": mean_ci(base["power"]),
                "fdp_diff": paired_comparison(doc["fdp_all"], base["fdp_all"], names=names, metric="FDP (all selected)"),
                "power_diff": mean_ci(doc["power"] - base["power"]),
            }
            vs_baselines.append(row["baselines"][fam]["fdp_diff"])
        return row, doc

    for variant, alpha, strategy in strategies:
        label = f"BH-{variant}(α={alpha:g})"
        measured_row, doc = measured(strategy, label)
        row = {"method": variant, "pvalues": strategy.pvalues, "selection": getattr(strategy, "selection", "pvalue"),
               "alpha": alpha, **measured_row}
        row["fdp_vs_alpha"] = paired_comparison(doc["fdp"], np.full_like(doc["fdp"], alpha), names=(label, "α"), metric="FDP")
        vs_alpha.append(row["fdp_vs_alpha"])
        rows.append(row)
    other_rows = []
    for family, value, strategy, label in others:
        row, _ = measured(strategy, label)
        other_rows.append({"family": family, "param": value, **row})
    adjust_family(vs_alpha)
    adjust_family(vs_baselines)
    for row in rows:
        row["verdict"] = _verdict(row)
    for row in other_rows:
        row["verdict"] = _verdict_other(row)
    out = {
        "tau": tau,
        "taus": list(taus),
        "num_sequences": data.num_sequences,
        "num_documents": len(set(documents)) if documents is not None else data.num_sequences,
        "seq_len": data.seq_len,
        "top_k": data.top_k,
        "needed_per_token": {f"{t:g}": data.needed(t).double().mean(dim=1).tolist() for t in taus},  # (L,) per tau
        "bh": rows,
        **({"others": other_rows} if other_rows else {}),
    }
    if null_pvalues:
        out["null_rejection"] = {m: null_rejection_rates(data, f, documents=documents) for m, f in null_pvalues.items()}
    return out


CALIBRATED = ("calibrated", "standardized")  # the p-value methods that need a calibration


def oracle_alphas(rs: RoutingSettings) -> list[float]:
    """The α of the oracle step: the sweep's, every other one when it has more than 4 (the run's
    time), always with the report's α; at least 3 whenever the sweep has 3."""
    alphas = sorted(set(rs.alphas))
    if len(alphas) > 4:
        alphas = alphas[::2]
    return sorted(set(alphas) | {rs.alpha})


def bh_variants(rs: RoutingSettings, calibration) -> list[tuple[str, float, BH]]:
    """(variant, alpha, BH) for every BH variant of ``rs.variants`` (a p-value method, "-router"
    for the router's experts; the "-wide" variants, max_k above the model's top-k, are left out)
    and α of :func:`oracle_alphas`; the per-expert calibrated null (whose p-value order is not the
    router's) always with ``selection="router"`` too, as variant ``"calibrated-router"``. Methods
    that need a calibration are left out without one."""
    pairs: list[tuple[str, str]] = []
    for name in rs.variants:
        method, selection, wide = parse_variant(name)
        extra = [(method, "router")] if method == "calibrated" and selection == "pvalue" else []
        for pair in [(method, selection)] * (not wide) + extra:
            if pair not in pairs:
                pairs.append(pair)
    out = []
    for method, selection in pairs:
        if method in CALIBRATED and calibration is None:
            continue
        cal = calibration if method in CALIBRATED else None
        variant = method if selection == "pvalue" else f"{method}-router"
        for alpha in oracle_alphas(rs):
            strategy = BH(alpha, min_k=rs.min_k, max_k=rs.max_k, pvalues=method, calibration=cal, selection=selection)
            out.append((variant, alpha, strategy))
    return out


def fdr_oracle(model, sequences: torch.Tensor, rs: RoutingSettings, calibration, *, documents: list[str] | None = None) -> dict:
    """The run's ``fdr_oracle`` step: :func:`record` the evaluation sequences once (the model
    routing by its own top-k), then every BH variant (:func:`bh_variants`) and the baselines
    offline (:func:`fdr_step`); ``documents``: each sequence's document id."""
    data = record(model, sequences)
    strategies = bh_variants(rs, None if calibration is None else MemoCalibration(calibration))
    first = {}  # one strategy per p-value method, for its null rejection rates
    for _, _, s in strategies:
        first.setdefault(s.pvalues, s)
    nulls = {m: (lambda layer, z, s=s: s.p_values(z, layer=layer)) for m, s in first.items()}
    baselines = tuple(f for f in BASELINES if f == "topk" or f in rs.families)
    others = [(f, v, rs.strategy(f, v), setting_label(f, v)) for f in rs.families if f not in BASELINES
              for v in sorted(rs.grid(f, top_k=data.top_k))[::2]]  # every other grid value: the step's time
    return fdr_step(
        data, strategies, documents=documents, baselines=baselines, min_k=rs.min_k, max_k=rs.max_k, null_pvalues=nulls,
        others=others,
    )
