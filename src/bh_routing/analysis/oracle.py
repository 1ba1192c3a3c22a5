"""What alpha bounds: false discoveries and power of a routing against an ablation oracle.

BH's guarantee is about hypotheses H_e "expert e is not needed for this token". The p-values
are built against other nulls (the calibration's "expert e is not in the model's top-k", or the
per-token empirical null), so whether alpha bounds anything about *needed* experts is a
measurement, made here.

**The oracle.** At a token and MoE layer, expert e is *needed* when removing it from the model's
own top-k changes the routed MoE output by more than ``tau`` in relative L2,
:math:`\\lVert O - O_{-e}\\rVert / \\lVert O\\rVert > \\tau` (exact, from
:mod:`bh_routing.models.ablation`). Experts outside the model's top-k are *not needed* by this
definition: the reference output does not contain them. So any selection outside the top-k is a
false discovery, and an experts budget beyond k can only add false discoveries. A block-output
definition (rather than the next-token loss) is local to the layer whose routing is tested,
exact, and costs one extra MoE pass; a loss-based one would need a forward per (token, layer,
expert) and mixes in every later layer's response.

**Per family, as BH bounds it.** Each (token, layer) is one family of E hypotheses. Its false
discovery proportion counts BH's *discoveries* only: the experts BH itself rejected, at most
``max_k`` of them; experts forced in by ``min_k`` are not discoveries. FDP = V / max(R, 1).
For the baselines (and for "all selected" with BH) every selected expert counts. Power = needed
experts selected / needed experts. Per sequence: the mean FDP over its (token, layer) families
(what the FDR, an expectation per family, is estimated by) and the pooled power. Intervals are
over sequences (the exchangeable unit), never tokens.

**Matched comparisons.** A baseline at BH's mean experts per token k̄ (over all layers and
tokens): top-k between the two integers around k̄, top-p and weight-ratio between the two
parameters (found by bisection) whose mean k brackets k̄, each per-sequence value interpolated
linearly in mean k - the exact expected value of choosing the two settings at random per token
in those proportions.

The BH strategies are evaluated on logits recorded once with the model routing by its own top-k
(every layer's hidden states as the model makes them); :func:`record` also works inside
:func:`bh_routing.models.patched`, for the selection as deployed.

**On a big model** (OLMoE-1B-7B: 16 MoE layers, 64 experts, top-8, hidden size 2048) the record
costs one forward pass plus the model's k routed (token, expert) pairs once more per layer (the
ablation needs each expert's output separately; the k ablated outputs then follow by arithmetic),
i.e. about twice the MoE compute of a plain forward, batch by batch on the accelerator, with a
transient of tokens x k x hidden per layer call. What is kept, on the CPU, is the logits, the
model's top-k indices, weights and effects: tokens x layers x (E + 4k) x 4 bytes (32 x 256
tokens: about 50 MB). Every BH setting and baseline is then evaluated from it without the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import BH, Strategy, TopK, TopP, WeightRatio, bh_count
from ..models import get_adapter
from ..models.ablation import LayerAblation, concat_layer, recording_ablation
from ..models.adapters import text_config
from .evaluate import per_document
from .stats import adjust_family, mean_ci, paired_comparison

TAU = 0.05  # default relative-L2 threshold of "needed": dropping every expert under it costs < 1% ppl (docs/fdr_oracle.md)
TAUS = (0.02, 0.05, 0.1, 0.2, 0.3)  # the sensitivity grid
LEVELS = (0.001, 0.01, 0.05)  # levels a of the null rejection rates P(p <= a | e not in top-k)


@dataclass
class OracleData:
    """Ablation records of N sequences of S tokens, every MoE layer (tokens sequence-major)."""

    layers: list[LayerAblation]  # (L,) records of N * S tokens each
    num_sequences: int  # N
    seq_len: int  # S
    num_experts: int  # E
    top_k: int  # the model's k
    norm_topk_prob: bool  # the model's weight convention
    _needed: dict = field(default_factory=dict, repr=False, compare=False)  # tau -> (L, N*S)

    def needed(self, tau: float) -> torch.Tensor:
        """(L, N*S) int64: needed experts per token at threshold ``tau``."""
        if tau not in self._needed:
            self._needed[tau] = torch.stack([(r.effect > tau).sum(dim=1) for r in self.layers])
        return self._needed[tau]


@torch.no_grad()
def record(model, sequences: torch.Tensor, *, batch_size: int = 8) -> OracleData:
    """Run ``sequences`` (N, S) through ``model`` as it is (patched or not); record every layer."""
    adapter, config = get_adapter(model), text_config(model)
    device = next(model.parameters()).device
    n, s = sequences.shape
    with recording_ablation(model) as records:
        for start in range(0, n, batch_size):
            model(input_ids=sequences[start : start + batch_size].to(device))
    return OracleData(
        layers=[concat_layer(r) for r in records],
        num_sequences=n,
        seq_len=s,
        num_experts=adapter.num_experts(config),
        top_k=adapter.top_k(config),
        norm_topk_prob=adapter.norm_topk_prob(config),
    )


class OracleRouting(Strategy):
    """Route with the oracle itself: the model's top-k experts whose ablation effect exceeds tau.

    For checking what "needed" means (patch mode: does dropping every unneeded expert at once
    keep the model's quality?), not for deployment - it runs every top-k expert to decide.
    Needs :func:`bh_routing.models.ablation.recording_ablation` active around the forward: its
    block pre-hook records the effects of the current call before the router runs, and this
    strategy reads the latest record of its layer. Experts are taken by descending effect;
    at least ``min_k``.
    """

    name = "oracle"

    def __init__(self, records: list[list[LayerAblation]], tau: float, *, min_k: int = 1) -> None:
        self.records, self.tau, self.min_k = records, float(tau), min_k

    def describe(self) -> dict:
        return {"name": self.name, "tau": self.tau, "min_k": self.min_k}

    def _choose(self, logits, probs, *, layer, model_top_k):
        recs = self.records[layer]
        if not recs or recs[-1].effect.shape[0] != logits.shape[0]:  # patched()'s dry run
            return torch.topk(probs, model_top_k, dim=-1).indices, torch.full((len(probs),), model_top_k), model_top_k
        rec = recs[-1]
        ranked = rec.effect.argsort(dim=1, descending=True, stable=True)  # (T, k)
        order = rec.model_indices.gather(1, ranked).to(logits.device)  # (T, k), most needed first
        counts = (rec.effect > self.tau).sum(dim=1).clamp(self.min_k, model_top_k).to(logits.device)  # (T,)
        return order, counts, model_top_k


# ---------------------------------------------------------------------------- selections
@dataclass(frozen=True)
class Selection:
    """One strategy's choice on every layer, seen by the oracle."""

    effect: torch.Tensor  # (L, T, W) float32: ablation effect of the expert in each used slot, 0 outside the top-k, -1 unused
    discovery: torch.Tensor  # (L, T, W) bool: the slot is one of the strategy's discoveries (not forced by min_k)

    @property
    def mean_k(self) -> float:
        return float((self.effect >= 0).sum(dim=-1).double().mean())


def _slot_effects(record: LayerAblation, indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(T, W): the ablation effect of each chosen expert (0 outside the model's top-k, -1 unused)."""
    t = record.effect.shape[0]
    full = torch.zeros(t, num_experts + 1)  # (T, E + 1), column E = the sentinel
    full.scatter_(1, record.model_indices, record.effect)
    full[:, num_experts] = -1.0
    return full.gather(1, indices)  # (T, W)


class _MemoCalibration:
    """A calibration whose p-values of one logits tensor and layer are computed once (the BH
    settings of a sweep differ in alpha only, and the recorded logits stay the same objects)."""

    def __init__(self, calibration) -> None:
        self._calibration, self._memo = calibration, {}

    def __getattr__(self, name):
        return getattr(self._calibration, name)

    def _memoized(self, kind: str, logits: torch.Tensor, layer: int, temperature: float) -> torch.Tensor:
        key = (kind, id(logits), layer, temperature)
        if key not in self._memo:
            fn = getattr(self._calibration, kind)
            self._memo[key] = (logits, fn(logits, layer, temperature=temperature))
        return self._memo[key][1]  # the logits are kept with the entry, so their id stays theirs

    def pvalues(self, logits: torch.Tensor, layer: int, *, temperature: float = 1.0) -> torch.Tensor:
        return self._memoized("pvalues", logits, layer, temperature)

    def standardized_pvalues(self, logits: torch.Tensor, layer: int, *, temperature: float = 1.0) -> torch.Tensor:
        return self._memoized("standardized_pvalues", logits, layer, temperature)


def select(data: OracleData, strategy: Strategy, *, pvalue_cache: dict | None = None) -> Selection:
    """Route every layer's recorded logits with ``strategy``.

    For :class:`BH` the discoveries are the first ``min(k̂, count)`` slots, with k̂ BH's own
    rejection count before the ``min_k`` clamp; for any other strategy every selected slot.
    ``pvalue_cache``: a dict to keep BH's p-values in across calls that share them (same
    p-value settings, other alpha).
    """
    effects, discoveries = [], []
    for layer, rec in enumerate(data.layers):
        r = strategy.route(rec.logits, layer=layer, model_top_k=data.top_k, norm_topk_prob=data.norm_topk_prob)
        counts = r.counts
        if isinstance(strategy, BH):
            key = (layer, repr({k: v for k, v in strategy.describe().items() if k != "alpha"}), id(strategy.calibration))
            cache = {} if pvalue_cache is None else pvalue_cache
            if key not in cache:
                cache[key] = strategy.p_values(rec.logits, layer=layer)  # (T, E)
            # BH's own count k̂ differs from the clamped count only where the clamp to min_k acted
            at_min = counts <= strategy.min_k  # (T,)
            if bool(at_min.any()):
                rejected, _ = bh_count(cache[key][at_min], strategy.alpha)  # (t,), unclamped
                counts = counts.clone()
                counts[at_min] = torch.minimum(rejected, counts[at_min])
        effects.append(_slot_effects(rec, r.indices, data.num_experts))  # (T, W)
        discoveries.append(torch.arange(r.indices.shape[1]) < counts.unsqueeze(1))  # (T, W)
    return _stack(effects, discoveries)


def _stack(effects: list[torch.Tensor], discoveries: list[torch.Tensor]) -> Selection:
    width = max(e.shape[1] for e in effects)

    def pad(x: torch.Tensor, value) -> torch.Tensor:  # (T, w) -> (T, width)
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    return Selection(
        effect=torch.stack([pad(e, -1.0) for e in effects]),  # (L, T, W)
        discovery=torch.stack([pad(d, False) for d in discoveries]),  # (L, T, W)
    )


def per_sequence(data: OracleData, sel: Selection, tau: float) -> dict[str, np.ndarray]:
    """Per-sequence FDP (discoveries), FDP (all selected), power and mean k, each (N,)."""
    return per_sequence_taus(data, sel, (tau,))[0]


def per_sequence_taus(data: OracleData, sel: Selection, taus) -> list[dict[str, np.ndarray]]:
    """:func:`per_sequence` at each threshold of ``taus`` (one pass over the selection)."""
    n, s = data.num_sequences, data.seq_len
    t = torch.tensor([float(x) for x in taus], dtype=sel.effect.dtype)  # (K,)
    used = sel.effect >= 0  # (L, T, W)
    needed_sel = sel.effect.unsqueeze(0) > t[:, None, None, None]  # (K, L, T, W)
    r = sel.discovery.sum(-1).float()  # (L, T)
    c = used.sum(-1).float()
    hits = needed_sel.sum(-1).float()  # (K, L, T): needed among the selected
    v = r - (needed_sel & sel.discovery).sum(-1).float()  # (K, L, T): discoveries not needed
    v_all = c - hits  # every selected slot is used
    needed = torch.stack([data.needed(x) for x in taus]).float()  # (K, L, T)

    def by_seq(x: torch.Tensor) -> torch.Tensor:  # (..., L, N*S) -> (..., N, L*S)
        lead = x.shape[:-2]
        return x.reshape(*lead, -1, n, s).transpose(-3, -2).reshape(*lead, n, -1)

    fdp = by_seq(v / r.clamp(min=1)).double().mean(dim=-1)  # (K, N)
    fdp_all = by_seq(v_all / c.clamp(min=1)).double().mean(dim=-1)
    power = by_seq(hits).double().sum(dim=-1) / by_seq(needed).double().sum(dim=-1).clamp(min=1)
    mean_k, discoveries = by_seq(c).double().mean(dim=-1).numpy(), by_seq(r).double().mean(dim=-1).numpy()  # (N,)
    needed_mean = by_seq(needed).double().mean(dim=-1)  # (K, N): needed experts per (token, layer), power's weight
    return [
        {"fdp": fdp[i].numpy(), "fdp_all": fdp_all[i].numpy(), "power": power[i].numpy(), "mean_k": mean_k,
         "discoveries": discoveries, "needed": needed_mean[i].numpy()}
        for i in range(len(t))
    ]


def per_doc(values: dict[str, np.ndarray], documents: list[str] | None) -> dict[str, np.ndarray]:
    """Per-sequence values reduced to one per document (the unit of every interval): means over the
    document's windows, power weighted by the window's needed experts (so it stays pooled)."""
    return {
        k: per_document(v, documents, weights=values["needed"] if k == "power" else None)[1]
        for k, v in values.items()
    }


def per_layer(data: OracleData, sel: Selection, tau: float) -> dict[str, list[float]]:
    """FDP (discoveries), power and mean k per MoE layer, pooled over all tokens."""
    needed_sel = sel.effect > tau
    r = sel.discovery.sum(-1).double()  # (L, T)
    v = (sel.discovery & ~needed_sel).sum(-1).double()
    return {
        "fdp": (v / r.clamp(min=1)).mean(dim=1).tolist(),
        "power": (needed_sel.sum(dim=(1, 2)).double() / data.needed(tau).sum(dim=1).clamp(min=1)).tolist(),
        "mean_k": (sel.effect >= 0).sum(-1).double().mean(dim=1).tolist(),
    }


# ---------------------------------------------------------------------------- matched baselines
class Ranking:
    """Each layer's experts by descending router probability: the order top-k, top-p and
    weight-ratio all take their first k from, so one sort serves every setting of the three.

    ``counts(family, param)`` applies each strategy's own count rule (:class:`TopK`,
    :class:`TopP`: experts before the sorted mass reaches p; :class:`WeightRatio`: experts within
    a factor beta of the top one; both clamped to [min_k, max_k]); the tests check the selections
    against the strategies' ``route``.
    """

    def __init__(self, data: OracleData, *, min_k: int, max_k: int) -> None:
        self.data, self.min_k, self.max_k = data, min_k, max_k
        width = max(max_k, data.top_k)  # top-k runs up to the model's k, the others up to max_k
        ranked = [torch.softmax(r.logits, dim=-1).sort(dim=-1, descending=True, stable=True) for r in data.layers]
        probs = [v[:, :width] for v, _ in ranked]  # (T, W) per layer
        # the quantities the two count rules threshold, first max_k columns
        self._mass_before = [(p.cumsum(-1) - p)[:, :max_k].contiguous() for p in probs]  # (T, max_k)
        self._ratio = [(p[:, :max_k] / p[:, :1]).contiguous() for p in probs]  # (T, max_k)
        # mean k as a function of the parameter, exactly: both thresholded quantities are monotone
        # along the ranking, so a clamped count is min_k + #{j in [min_k, max_k): value passes};
        # pooled over layers and tokens and sorted once, a mean k is one binary search
        self._pooled = {
            family: np.sort(torch.cat([v[:, min_k:].reshape(-1) for v in values]).numpy())
            for family, values in (("topp", self._mass_before), ("weight_ratio", self._ratio))
        }
        self._cells = sum(len(p) for p in probs)  # tokens x layers
        self.effects = [_slot_effects(r, i[:, :width], data.num_experts) for r, (_, i) in zip(data.layers, ranked)]
        self._cache: dict = {}

    def counts(self, family: str, param: float) -> list[torch.Tensor]:
        """(T,) experts per token on each layer."""
        t = self.data.layers[0].logits.shape[0]
        if family == "topk":
            return [torch.full((t,), int(param)) for _ in self.data.layers]
        if family == "topp":  # experts before the sorted mass reaches p
            return [(m < param).sum(-1).clamp(self.min_k, self.max_k) for m in self._mass_before]
        if family == "weight_ratio":  # experts within a factor beta of the top one
            return [(r >= param).sum(-1).clamp(self.min_k, self.max_k) for r in self._ratio]
        raise ValueError(f"unknown baseline family {family!r}")

    def mean_k(self, family: str, param: float) -> float:
        """Mean experts per (token, layer) of a setting, from the pooled sorted values."""
        if family == "topk":
            return float(param)
        if family == "topp":  # values < p pass
            passing = np.searchsorted(self._pooled["topp"], np.float32(param), side="left")
        elif family == "weight_ratio":  # values >= beta pass
            values = self._pooled["weight_ratio"]
            passing = len(values) - np.searchsorted(values, np.float32(param), side="left")
        else:
            raise ValueError(f"unknown baseline family {family!r}")
        return self.min_k + passing / self._cells

    def selection(self, family: str, param: float) -> Selection:
        effects, used = [], []
        for eff, c in zip(self.effects, self.counts(family, param)):
            u = torch.arange(eff.shape[1]) < c.unsqueeze(1)  # (T, W)
            effects.append(torch.where(u, eff, torch.full_like(eff, -1.0)))
            used.append(u)
        return _stack(effects, used)

    def values(self, family: str, param: float, tau: float) -> dict[str, np.ndarray]:
        key = (family, param, tau)
        if key not in self._cache:
            self._cache[key] = per_sequence(self.data, self.selection(family, param), tau)
        return self._cache[key]


def bracket(count: Callable[[float], float], target: float, *, increasing: bool, steps: int = 40) -> tuple[float, float]:
    """Parameters (a, b) in (0, 1] with count(a) <= target <= count(b), by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if (count(mid) <= target) == increasing:
            lo = mid
        else:
            hi = mid
    return (max(lo, 1e-12), hi) if increasing else (hi, max(lo, 1e-12))


def _interpolate(a: dict, b: dict, target: float) -> dict[str, np.ndarray]:
    """Per-sequence values of the random mix of two settings whose mean k brackets ``target``."""
    ka, kb = float(a["mean_k"].mean()), float(b["mean_k"].mean())
    lam = 0.0 if kb == ka else min(max((target - ka) / (kb - ka), 0.0), 1.0)
    return {k: (1 - lam) * a[k] + lam * b[k] for k in a}


def matched(ranking: Ranking, family: str, target: float, *, tau: float) -> dict | None:
    """A baseline family at overall mean k ``target``: per-sequence values and its two settings.

    None when the family cannot reach ``target`` (top-k: outside [1, k]; the others: outside the
    mean k of their extreme settings).
    """
    if family == "topk":
        top = ranking.data.top_k
        if not 1 - 1e-9 <= target <= top + 1e-9:
            return None
        ka = min(max(int(math.floor(target)), 1), top)
        a, b = (ka, min(ka + 1, top))
    else:
        count = lambda param: ranking.mean_k(family, param)  # noqa: E731
        ends = (count(1e-12), count(1.0))
        if not min(ends) - 1e-9 <= target <= max(ends) + 1e-9:
            return None
        a, b = bracket(count, target, increasing=family == "topp")
    values = _interpolate(ranking.values(family, a, tau), ranking.values(family, b, tau), target)
    return {"settings": [a, b], **values}


# ---------------------------------------------------------------------------- null rejection rates
def null_rejection_rates(
    data: OracleData, pvalues: Callable[[int, torch.Tensor], torch.Tensor], *, levels=LEVELS,
    documents: list[str] | None = None,
) -> list[dict]:
    """Per layer: P(p_e <= a | e not in the model's top-k at that layer) for each level a.

    The nominal value is a (conformal p-values: at most a, when calibration and evaluation tokens
    are exchangeable). Interval: the t-interval over documents of the per-document rate (each
    document's rejections over its null pairs; documents weigh the same).
    """
    n, s = data.num_sequences, data.seq_len
    out = []
    for layer, rec in enumerate(data.layers):
        p = pvalues(layer, rec.logits)  # (T, E)
        null = torch.ones_like(p, dtype=torch.bool).scatter(1, rec.model_indices, False)  # (T, E)
        pairs = null.sum(1).reshape(n, s).sum(1).double().numpy()  # (N,) per sequence
        row = {"layer": layer, "null_pairs": int(pairs.sum())}
        for a in levels:
            hits = ((p <= a) & null).sum(1).reshape(n, s).sum(1).double().numpy()  # (N,)
            rate = per_document(hits / pairs, documents, weights=pairs)[1]  # (D,)
            ci = mean_ci(rate)
            row[str(a)] = {**ci, "pooled": float(hits.sum() / pairs.sum()), "ratio_to_nominal": ci["mean"] / a}
        out.append(row)
    return out


# ---------------------------------------------------------------------------- summaries
def summarize(values: dict[str, np.ndarray]) -> dict:
    """Mean and t-interval over documents of each per-document quantity."""
    return {k: mean_ci(v) for k, v in values.items()}


# ---------------------------------------------------------------------------- the run's step
BASELINES = ("topk", "topp", "weight_ratio")


_VS_ALPHA = {"lower": "below α", "higher": "above α: α does not bound it",
             "no significant difference": "not significantly different from α"}
_VS_BASELINE = {"lower": "cleaner than", "higher": "less clean than", "no significant difference": "no cleaner than"}


def _verdict(row: dict) -> str:
    """One plain sentence: is FDP <= alpha, and are BH's selections cleaner than the matched baselines'?"""
    fdp, vs = row["fdp"], row["fdp_vs_alpha"]
    head = f"{row['label']}: FDP {fdp['mean']:.3g} (95% CI {fdp['ci_low']:.3g} to {fdp['ci_high']:.3g}), "
    if vs["decision"] == "too few documents":
        return head + f"α = {row['alpha']:g}, mean k {row['mean_k']:.2f}: too few documents for a verdict."
    parts = []
    for fam, b in row["baselines"].items():
        if b is None:
            parts.append(f"{fam} cannot reach that mean k")
            continue
        d = b["fdp_diff"]
        parts.append(f"{_VS_BASELINE[d['decision']]} {fam} (ΔFDP {d['mean_diff']:+.3g}, 95% CI {d['ci_low']:.3g} to "
                     f"{d['ci_high']:.3g})")
    return (head + f"{_VS_ALPHA[vs['decision']]} (α = {row['alpha']:g}); at its mean k {row['mean_k']:.2f} its "
            "selections are " + "; ".join(parts) + ".")


def fdr_step(data: OracleData, strategies: list[tuple[str, float, BH]], *, documents: list[str] | None = None,
             tau: float = TAU, taus=TAUS, baselines=BASELINES, min_k: int = 1, max_k: int | None = None,
             null_pvalues: dict[str, Callable[[int, torch.Tensor], torch.Tensor]] | None = None) -> dict:
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

    Notes
    -----
    Two families of tests, each Holm-adjusted (:func:`~bh_routing.analysis.stats.adjust_family`):
    FDP against α (one per BH setting) and BH's FDP (all selected) against each baseline's at the
    same mean k. Power differences are reported with intervals, without a verdict.
    """
    ranking = Ranking(data, min_k=min_k, max_k=max_k or data.top_k)
    cache: dict = {}
    rows, vs_alpha, vs_baselines = [], [], []
    for variant, alpha, strategy in strategies:
        sel = select(data, strategy, pvalue_cache=cache)
        seq = per_sequence(data, sel, tau)
        doc = per_doc(seq, documents)
        label = f"BH-{variant}(α={alpha:g})"
        row = {"method": variant, "pvalues": strategy.pvalues, "selection": getattr(strategy, "selection", "pvalue"),
               "alpha": alpha, "label": label, **summarize(doc)}
        row["mean_k"] = row["mean_k"]["mean"]
        row["fdp_vs_alpha"] = paired_comparison(doc["fdp"], np.full_like(doc["fdp"], alpha), names=(label, "α"), metric="FDP")
        vs_alpha.append(row["fdp_vs_alpha"])
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
        rows.append(row)
    adjust_family(vs_alpha)
    adjust_family(vs_baselines)
    for row in rows:
        row["verdict"] = _verdict(row)
    out = {
        "tau": tau,
        "taus": list(taus),
        "num_sequences": data.num_sequences,
        "num_documents": len(set(documents)) if documents is not None else data.num_sequences,
        "seq_len": data.seq_len,
        "top_k": data.top_k,
        "needed_per_token": {f"{t:g}": data.needed(t).double().mean(dim=1).tolist() for t in taus},  # (L,) per tau
        "bh": rows,
    }
    if null_pvalues:
        out["null_rejection"] = {m: null_rejection_rates(data, f, documents=documents) for m, f in null_pvalues.items()}
    return out


CALIBRATED = ("calibrated", "standardized")  # the p-value methods that need a calibration


def oracle_alphas(cfg) -> list[float]:
    """The α of the oracle step: the sweep's, every other one when it has more than 4 (the run's
    time), always with the report's α; at least 3 whenever the sweep has 3."""
    alphas = sorted(set(cfg.alphas))
    if len(alphas) > 4:
        alphas = alphas[::2]
    return sorted(set(alphas) | {cfg.alpha})


def bh_variants(cfg, calibration) -> list[tuple[str, float, BH]]:
    """(variant, alpha, BH) for every BH variant of ``cfg.pvalues`` (a p-value method, "-router"
    for the router's experts; the "-wide" variants, max_k above the model's top-k, are left out)
    and α of :func:`oracle_alphas`; the per-expert calibrated null (whose p-value order is not the
    router's) always with ``selection="router"`` too, as variant ``"calibrated-router"``. Methods
    that need a calibration are left out without one."""
    from .experiments import parse_variant

    pairs: list[tuple[str, str]] = []
    for name in cfg.pvalues:
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
        for alpha in oracle_alphas(cfg):
            strategy = BH(alpha, min_k=cfg.min_k, max_k=cfg.max_k, pvalues=method, calibration=cal, selection=selection)
            out.append((variant, alpha, strategy))
    return out


def fdr_oracle(model, sequences: torch.Tensor, cfg, calibration, *, documents: list[str] | None = None) -> dict:
    """The run's ``fdr_oracle`` step: :func:`record` the evaluation sequences once (the model
    routing by its own top-k), then every BH variant (:func:`bh_variants`) and the baselines
    offline (:func:`fdr_step`); ``documents``: each sequence's document id."""
    data = record(model, sequences)
    strategies = bh_variants(cfg, None if calibration is None else _MemoCalibration(calibration))
    first = {}  # one strategy per p-value method, for its null rejection rates
    for _, _, s in strategies:
        first.setdefault(s.pvalues, s)
    nulls = {m: (lambda layer, z, s=s: s.p_values(z, layer=layer)) for m, s in first.items()}
    baselines = tuple(f for f in BASELINES if f == "topk" or f in cfg.strategies)
    return fdr_step(
        data, strategies, documents=documents, baselines=baselines, min_k=cfg.min_k, max_k=cfg.max_k, null_pvalues=nulls,
    )
