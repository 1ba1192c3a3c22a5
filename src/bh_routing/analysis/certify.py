"""Certified routing: the cheapest setting of each strategy family with a guarantee on quality.

For a strategy family with a grid of settings ordered from the safest to the cheapest (BH α large
→ small, top-k k from the model's k down, top-p p large → small, weight-ratio β small → large),
:func:`certify` measures a bounded risk per calibration sequence at every grid point and certifies,
with Learn-then-Test (:mod:`bh_routing.core.risk_control`: Hoeffding-Bentkus p-values,
fixed-sequence testing within a family, Bonferroni δ/F across the F families), the settings whose
risk on new sequences from the same distribution is at most ε:

.. math:: P\\big(\\text{every certified setting } \\lambda \\text{ has } R(\\lambda) \\le \\varepsilon\\big) \\ge 1 - \\delta

where the probability is over the calibration sample. Because all families hold together, the
cheapest certified setting of each family *and* the cheapest family overall keep the guarantee.

Risks (per sequence, so each is bounded and sequences are the exchangeable unit; never tokens):

``"top1"``
    Top-1 disagreement: the share of the sequence's S − 1 next-token positions whose greedy
    (argmax) token under the routed model differs from the unpatched model's. In [0, 1].
``"loss"``
    Loss increase: the sequence's mean next-token NLL under the routed model minus the unpatched
    model's, in nats/token, clipped to [0, B] with ``B = LOSS_BOUND = 1`` nat/token. Why B = 1: a
    sequence whose loss rises by a whole nat per token (perplexity × e) is broken, and any level a
    user would certify is far below it, so the clip changes the risk only on broken sequences; and
    B = 1 keeps ε in nats in the same (0, 1] range as the top-1 risk. The certified quantity is
    the clipped mean, :math:`E[\\min(\\max(\\Delta, 0), B)]`: the lower clip only raises it
    (conservative), the upper clip lowers it, so every grid point reports how often each clip
    binds (``clip_high``, ``clip_low``).

Cost: one unpatched forward pass over the calibration sequences (greedy tokens and NLL per token,
kept) and one patched pass per grid point; both risks come out of the same passes, so a
certificate can be recomputed for any risk, ε and δ from the saved per-sequence risks
(:func:`recertify`, the notebook's sliders) without running the model.

Validity conditions. The calibration units must be exchangeable with the units the certificate is
applied to: sequences drawn from the same distribution of text (use ``groups`` when several
sequences come from one document, so that documents are the unit). A BH family whose calibrated
null was fitted on the certifying sequences depends on them; only pass a ``calibration`` fitted on
other text.

certificate.json (``format: "bh-routing-certificate"``, ``format_version: "1"``)
------------------------------------------------------------------------------
Read it with :func:`load_certificate`; :func:`certified_strategy` turns it into a ``Strategy``.

``model``: ``{"name", "fingerprint", "num_layers", "num_experts", "top_k"}`` (the fingerprint is
:func:`bh_routing.models.model_fingerprint`; :func:`certified_strategy` refuses any other model).
``risk`` (``"top1"`` | ``"loss"``), ``epsilon``, ``delta``, ``delta_per_family`` (δ/F),
``loss_bound`` (B), ``pvalue`` (``"hoeffding-bentkus"``), ``fwer`` (a sentence), ``unit``
(``"sequence"`` | ``"document"``), ``n_units`` (units certified on), ``min_units`` (fewest units
any certificate at ε, δ/F needs), ``n_sequences``, ``seq_len`` (tokens per sequence certified on),
``grid`` (``"fine"`` | ``"coarse"``), ``stop_above`` (``{"risk", "value"}`` or null: each family
measured up to its first point with mean risk above ``value``), ``seed``, ``versions``.
``families``: ``{family: {"chosen": index or null, "num_certified": J, "grid": [point, ...]}}``
with each point ``{"label", "family", "param", "strategy" (Strategy.describe(), what
:func:`strategy_from_description` rebuilds), "measured", "mean_k", "compute_fraction",
"risk_mean", "p_value", "upper_bound", "certified", "clip_high", "clip_low"}`` in test order
(null numbers for points not measured). ``best_family``: the family whose chosen setting has the
least mean k (null if nothing is certified). ``per_sequence``: ``{"top1": [[...] or null per grid
point], "loss_delta": [[...] or null] (unclipped nats/token), "groups": [...] or null}`` in the
order of :func:`grid_points` (all families' grids concatenated in ``families`` order). Written by
runs and ``bh-routing certify`` also: ``held_out`` (:func:`held_out_check` on the evaluation
sequences) and ``frontier`` (:func:`certified_frontier`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core import BH, BHRoutingError, Calibration, Strategy, TopK, TopP, WeightRatio
from ..core.risk_control import TooFewSequencesError, fixed_sequence_test, hb_pvalue, learn_then_test, min_sequences
from ..models import get_adapter, model_fingerprint, patched
from ..models.adapters import text_config

RISKS = ("top1", "loss")
LOSS_BOUND = 1.0  # B, nats/token: the loss-increase risk is clipped to [0, B] (see the module notes)
FAMILIES = ("topk", "topp", "weight_ratio", "bh")  # "bh-calibrated" too when a calibration is given
DEFAULT_EPSILON = 0.1  # the certify step of `bh-routing run`: top-1 disagreement at most 10 % ...
DEFAULT_DELTA = 0.1  # ... with probability at least 90 %
DEFAULT_RISK = "top1"
FORMAT = "bh-routing-certificate"
FORMAT_VERSION = "1"

# grids, safest first (fixed-sequence testing walks them in this order)
# (on the embedded model p = 0.9, β = 0.02 and α = 0.95 already drop a few tokens' 8th expert;
# BH with the empirical null falls from 8 to ~3.6 experts between α = 0.95 and 0.5)
TOPP_GRID = (0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.4, 0.3, 0.2)
RATIO_GRID = (0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5)
ALPHA_GRID = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.3, 0.1, 0.05, 0.01)


class CertificateError(BHRoutingError, ValueError):
    """A certificate that cannot be made or used; the message is one line for the user."""


@dataclass
class GridPoint:
    """One setting of a family's grid."""

    family: str  # "topk" | "topp" | "weight_ratio" | "bh" | "bh-calibrated"
    param: float  # k, p, β or α
    label: str  # e.g. "TopK(k=6)"
    strategy: Strategy = field(repr=False)


def check_certify_args(*, risk: str, epsilon: float, delta: float, loss_bound: float = LOSS_BOUND,
                       prefix: str = "") -> None:
    """Raise CertificateError (one line) for a bad risk, ε or δ; call before loading a model.

    ``prefix`` goes before each name in the message (``"certify_"`` for the run's settings).
    """
    if risk not in RISKS:
        raise CertificateError(f"{prefix}risk must be one of {', '.join(RISKS)}, got {risk!r}")
    for name, v in (("epsilon", epsilon), ("delta", delta), ("loss_bound", loss_bound)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise CertificateError(f"{prefix}{name} must be a number, got {v!r}")
    if not 0.0 < loss_bound:
        raise CertificateError(f"loss_bound must be > 0, got {loss_bound}")
    top = 1.0 if risk == "top1" else loss_bound
    if not 0.0 < epsilon <= top:
        raise CertificateError(f"{prefix}epsilon must be in (0, {top:g}], got {epsilon}")
    if not 0.0 < delta < 1.0:
        raise CertificateError(f"{prefix}delta must be in (0, 1), got {delta}")


def needed_units(*, risk: str, epsilon: float, delta: float, num_families: int, loss_bound: float = LOSS_BOUND) -> int:
    """Fewest calibration units any certificate needs at ε, with δ split over the families."""
    check_certify_args(risk=risk, epsilon=epsilon, delta=delta, loss_bound=loss_bound)
    scale = 1.0 if risk == "top1" else loss_bound
    return min_sequences(epsilon / scale, delta / num_families)


def check_enough_units(n: int, *, risk: str, epsilon: float, delta: float, num_families: int,
                       loss_bound: float = LOSS_BOUND, what: str = "sequences") -> int:
    """Raise CertificateError unless n units can support a certificate (before any model runs).

    Returns the fewest units needed (:func:`needed_units`).
    """
    need = needed_units(risk=risk, epsilon=epsilon, delta=delta, num_families=num_families, loss_bound=loss_bound)
    if n < need:
        raise CertificateError(
            f"too few calibration {what} to certify: got {n}, need at least {need} for "
            f"epsilon={epsilon:g}, delta={delta:g} over {num_families} "
            f"famil{'y' if num_families == 1 else 'ies'} (delta/{num_families} each)"
        )
    return need


# ------------------------------------------------------------------------------------ the grid
def default_grid(
    model_top_k: int,
    *,
    families=FAMILIES,
    min_k: int = 1,
    max_k: int | None = None,
    calibration: Calibration | None = None,
    coarse: bool = False,
) -> list[GridPoint]:
    """The ordered grid of every family, safest setting first.

    ``topk``: k = K, K-1, ..., 1. ``topp``: :data:`TOPP_GRID` (p large → small). ``weight_ratio``:
    :data:`RATIO_GRID` (β small → large). ``bh``: BH with the empirical null, :data:`ALPHA_GRID`
    (α large → small). ``bh-calibrated``: the same α with the conformal null of ``calibration``.
    The variable-k families use ``min_k`` and ``max_k`` (default the model's k). ``coarse``: every
    other point of the top-p, weight-ratio and α grids (fewer passes; top-k keeps every k).
    """
    families = check_families(families, calibrated=True)
    if "bh-calibrated" in families and calibration is None:
        raise CertificateError("family 'bh-calibrated' needs a calibration fitted on other text")
    step = 2 if coarse else 1
    topp, ratio, alpha = TOPP_GRID[::step], RATIO_GRID[::step], ALPHA_GRID[::step]
    grid: list[GridPoint] = []
    for fam in families:
        if fam == "topk":
            grid += [GridPoint(fam, k, f"TopK(k={k})", TopK(k)) for k in range(model_top_k, 0, -1)]
        elif fam == "topp":
            grid += [GridPoint(fam, p, f"TopP(p={p:g})", TopP(p, min_k=min_k, max_k=max_k)) for p in topp]
        elif fam == "weight_ratio":
            grid += [
                GridPoint(fam, b, f"WeightRatio(β={b:g})", WeightRatio(b, min_k=min_k, max_k=max_k)) for b in ratio
            ]
        else:
            method = "empirical" if fam == "bh" else "calibrated"
            cal = calibration if method == "calibrated" else None
            grid += [
                GridPoint(fam, a, f"BH-{method}(α={a:g})", BH(a, min_k=min_k, max_k=max_k, pvalues=method, calibration=cal))
                for a in alpha
            ]
    return grid


# ------------------------------------------------------------------------------------ the passes
@torch.no_grad()
def _next_token_stats(model, sequences: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy next token (N, S-1) int64 and its NLL (N, S-1) float64 for every position."""
    device = next(model.parameters()).device
    tops, nlls = [], []
    for start in range(0, sequences.shape[0], batch_size):
        ids = sequences[start : start + batch_size].to(device)  # (b, S)
        logits = model(input_ids=ids).logits[:, :-1].float()  # (b, S-1, V)
        tops.append(logits.argmax(dim=-1).cpu())  # (b, S-1)
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (b, S-1)
        nlls.append(nll.double().cpu())
    return torch.cat(tops), torch.cat(nlls)


@dataclass
class RiskTable:
    """Per-sequence risks of every grid point; ``None`` rows: points not measured (``stop_above``)."""

    points: list[dict]  # per grid point: family, param, label, strategy, measured, mean_k, compute_fraction
    top1: list  # m rows of (N,) top-1 disagreement per sequence in [0, 1], or None
    loss_delta: list  # m rows of (N,) loss increase per sequence (nats/token, unclipped), or None
    seq_len: int

    def per_sequence(self, groups=None) -> dict:
        """The ``per_sequence`` block of a certificate (JSON-able)."""
        rows = lambda xs: [None if x is None else np.asarray(x).tolist() for x in xs]  # noqa: E731
        return {"top1": rows(self.top1), "loss_delta": rows(self.loss_delta),
                "groups": None if groups is None else list(groups)}


def _family_slices(families: list[str]) -> dict[str, range]:
    """{family: range of its grid indices}; each family's points must be contiguous."""
    out: dict[str, range] = {}
    for fam in dict.fromkeys(families):
        idx = [i for i, f in enumerate(families) if f == fam]
        if idx != list(range(idx[0], idx[-1] + 1)):
            raise CertificateError(f"grid points of family {fam!r} must be contiguous")
        out[fam] = range(idx[0], idx[-1] + 1)
    return out


def measure_risks(model, sequences: torch.Tensor, grid: list[GridPoint], *, batch_size: int = 16,
                  stop_above: tuple[str, float] | None = None, loss_bound: float = LOSS_BOUND,
                  progress: bool = False) -> RiskTable:
    """Both risks of every grid point on every sequence (N, S): 1 unpatched + ≤ m patched passes.

    ``stop_above=(risk, c)``: within each family, stop after the first point whose mean ``risk``
    exceeds c; the family's later points stay unmeasured (``None``). Lossless for that risk at
    every ε ≤ c (the p-value of a point with mean risk ≥ ε is 1, so fixed-sequence testing stops
    there anyway) and valid for every other (ε, risk): an unmeasured point counts as not rejected,
    which only removes rejections from a valid fixed-sequence procedure.
    """
    if sequences.dim() != 2 or sequences.shape[1] < 2:
        raise CertificateError(f"sequences must have shape (N, S) with S >= 2, got {tuple(sequences.shape)}")
    ref_top, ref_nll = _next_token_stats(model, sequences, batch_size)  # (N, S-1) each
    m = len(grid)
    table = RiskTable([], [None] * m, [None] * m, int(sequences.shape[1]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=m, desc="certify grid", leave=False)
    stopped: set[str] = set()
    for i, gp in enumerate(grid):
        point = {"family": gp.family, "param": float(gp.param), "label": gp.label, "strategy": gp.strategy.describe(),
                 "measured": gp.family not in stopped, "mean_k": None, "compute_fraction": None}
        table.points.append(point)
        if bar is not None:
            bar.update()
        if not point["measured"]:
            continue
        with patched(model, gp.strategy, mode="patch") as rec:
            tops, nll = _next_token_stats(model, sequences, batch_size)
            point["mean_k"], point["compute_fraction"] = float(rec.mean_experts_per_token()), float(rec.compute_fraction())
        table.top1[i] = (tops != ref_top).double().mean(dim=1).numpy()  # (N,)
        table.loss_delta[i] = (nll - ref_nll).mean(dim=1).numpy()  # (N,)
        if stop_above is not None:
            risk, c = stop_above
            value = _risk_matrix(table.top1[i], table.loss_delta[i], risk, loss_bound)  # (N,) in [0, 1]
            if float(np.mean(value)) * (1.0 if risk == "top1" else loss_bound) > c:
                stopped.add(gp.family)
    if bar is not None:
        bar.close()
    _family_slices([p["family"] for p in table.points])
    return table


# ------------------------------------------------------------------------------------ certifying
def _risk_matrix(top1: np.ndarray, loss_delta: np.ndarray, risk: str, loss_bound: float) -> np.ndarray:
    """(m, N) risks in [0, 1]: top-1 disagreement, or the loss increase clipped to [0, B] over B."""
    if risk == "top1":
        return np.clip(top1, 0.0, 1.0)
    return np.clip(loss_delta, 0.0, loss_bound) / loss_bound


def _by_group(x: np.ndarray, groups) -> np.ndarray:
    """(m, N) per-sequence risks -> (m, G) per-group means (groups in order of first appearance)."""
    if groups is None:
        return x
    g = np.asarray(groups)
    if g.shape != (x.shape[1],):
        raise CertificateError(f"groups must give one id per sequence ({x.shape[1]}), got {g.shape}")
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    order = np.argsort(first)  # groups in order of first appearance
    sums = np.zeros((x.shape[0], first.size))
    np.add.at(sums.T, inverse, x.T)
    counts = np.bincount(inverse, minlength=first.size)
    return (sums / counts)[:, order]


def recertify(per_sequence: dict, points: list[dict], *, risk: str, epsilon: float, delta: float,
              loss_bound: float = LOSS_BOUND) -> dict:
    """Certify every family from saved per-sequence risks (no model): the ``families`` block.

    Parameters
    ----------
    per_sequence : dict
        ``{"top1": m rows, "loss_delta": m rows, "groups": None or N ids}`` as saved in
        certificate.json (:meth:`RiskTable.per_sequence`); a ``None`` row is a point that was not
        measured: it counts as not certified, so fixed-sequence testing stops there.
    points : list of dict
        The m grid points (``family``, ``label``, ``param``, ``strategy``, ``mean_k``,
        ``compute_fraction``), families contiguous, each safest first.
    risk, epsilon, delta, loss_bound
        As in :func:`certify`.

    Returns
    -------
    dict
        ``{"families": {...}, "best_family": ..., "delta_per_family": ..., "n_units": ...,
        "min_units": ...}`` (see the module notes for each point's fields).
    """
    check_certify_args(risk=risk, epsilon=epsilon, delta=delta, loss_bound=loss_bound)
    top1, loss = per_sequence["top1"], per_sequence["loss_delta"]
    if not len(top1) == len(loss) == len(points):
        raise CertificateError(f"per-sequence risks ({len(top1)}, {len(loss)} rows) do not match {len(points)} grid points")
    measured = [i for i, row in enumerate(top1) if row is not None]
    if not measured:
        raise CertificateError("no grid point was measured")
    t = np.asarray([top1[i] for i in measured], dtype=np.float64)  # (m', N)
    l = np.asarray([loss[i] for i in measured], dtype=np.float64)  # (m', N)
    units = _by_group(_risk_matrix(t, l, risk, loss_bound), per_sequence.get("groups"))  # (m', n)
    row_of = {i: r for r, i in enumerate(measured)}
    slices = _family_slices([p["family"] for p in points])
    d_f = delta / len(slices)
    scale = 1.0 if risk == "top1" else loss_bound
    need = check_enough_units(units.shape[1], risk=risk, epsilon=epsilon, delta=delta, num_families=len(slices),
                              loss_bound=loss_bound,
                              what="documents" if per_sequence.get("groups") is not None else "sequences")
    families = {}
    for fam, idx in slices.items():
        prefix = []  # the measured points that lead the family's grid
        for i in idx:
            if i not in row_of:
                break
            prefix.append(i)
        grid = [{**points[i], "measured": False, "risk_mean": None, "p_value": None, "upper_bound": None,
                 "certified": False, "clip_high": None, "clip_low": None} for i in idx]
        chosen, num = None, 0
        if prefix:
            rows = [row_of[i] for i in prefix]
            try:
                res = learn_then_test(units[rows], epsilon=epsilon / scale, delta=d_f,
                                      cost=[points[i]["mean_k"] for i in prefix])
            except TooFewSequencesError as exc:  # unreachable after the check above; one line anyway
                raise CertificateError(str(exc)) from None
            chosen, num = res.chosen, res.num_certified
            for j, i in enumerate(prefix):
                grid[j].update({
                    "measured": True,
                    "risk_mean": float(res.risk_mean[j] * scale),
                    "p_value": float(res.pvalues[j]),
                    "upper_bound": float(res.upper_bounds[j] * scale),
                    "certified": bool(j < res.num_certified),
                    "clip_high": float(np.mean(l[row_of[i]] > loss_bound)),
                    "clip_low": float(np.mean(l[row_of[i]] < 0.0)),
                })
        families[fam] = {"chosen": chosen, "num_certified": num, "grid": grid}
    chosen = {f: v["grid"][v["chosen"]]["mean_k"] for f, v in families.items() if v["chosen"] is not None}
    return {
        "families": families,
        "best_family": min(chosen, key=chosen.get) if chosen else None,
        "delta_per_family": d_f,
        "n_units": int(units.shape[1]),
        "min_units": need,
    }


def certified_frontier(per_sequence: dict, points: list[dict], *, risk: str, delta: float, epsilons,
                       loss_bound: float = LOSS_BOUND) -> dict:
    """Certified mean experts per token of each family at each ε (``None`` where none certified).

    Returns ``{"epsilon": [...], "families": {family: [mean k or None, ...]}}`` from
    :func:`recertify` at each ε (same δ); ε values below the fewest-units limit give ``None``.
    """
    eps = [float(e) for e in epsilons]
    fams = list(dict.fromkeys(p["family"] for p in points))
    out: dict = {"epsilon": eps, "delta": float(delta), "risk": risk, "families": {f: [] for f in fams}}
    for e in eps:
        try:
            cert = recertify(per_sequence, points, risk=risk, epsilon=e, delta=delta, loss_bound=loss_bound)
        except CertificateError:
            cert = None
        for f in fams:
            point = None if cert is None else chosen_point(cert, f)
            out["families"][f].append(None if point is None else point["mean_k"])
    return out


def chosen_point(cert: dict, family: str | None = None) -> dict | None:
    """The chosen grid point of ``family`` (default: the best family), or None if none certified."""
    fams = cert["families"]
    if family is None:
        family = cert.get("best_family")
        if family is None:
            return None
    if family not in fams:
        raise CertificateError(f"family {family!r} is not in the certificate; available: {', '.join(fams)}")
    entry = fams[family]
    return None if entry["chosen"] is None else entry["grid"][entry["chosen"]]


def model_meta(model, model_name: str | None = None) -> dict:
    adapter, conf = get_adapter(model), text_config(model)
    name = model_name or getattr(model.config, "_name_or_path", "") or "?"
    return {"name": name, "fingerprint": model_fingerprint(model), "num_layers": len(adapter.find_layers(model)),
            "num_experts": adapter.num_experts(conf), "top_k": adapter.top_k(conf)}


def certify(
    model,
    sequences: torch.Tensor,
    *,
    risk: str = DEFAULT_RISK,
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
    families=FAMILIES,
    grid: list[GridPoint] | None = None,
    groups=None,
    min_k: int = 1,
    max_k: int | None = None,
    calibration: Calibration | None = None,
    loss_bound: float = LOSS_BOUND,
    stop_above: tuple[str, float] | None = None,
    coarse: bool = False,
    seed: int | None = None,
    model_name: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict:
    """Certify the cheapest setting of each strategy family on calibration ``sequences``.

    Learn-then-Test (Angelopoulos et al. 2025) with Hoeffding-Bentkus p-values and fixed-sequence
    testing along each family's ordered grid, δ/F per family (see :mod:`bh_routing.core.risk_control`).
    With probability ≥ 1 − δ over the calibration sequences, every certified setting has
    :math:`E[\\text{risk on a new sequence}] \\le \\varepsilon`.

    Parameters
    ----------
    model : transformers MoE model
    sequences : torch.Tensor, shape (N, S)
        Calibration token ids, disjoint from any text the certificate will be judged on.
    risk : {"top1", "loss"}, default "top1"
    epsilon : float
        Risk level: in (0, 1] for ``top1``, in (0, loss_bound] nats/token for ``loss``.
    delta : float in (0, 1)
        Probability that the certificate is wrong.
    families : sequence of str
        Families to certify, from :data:`FAMILIES` (+ ``"bh-calibrated"`` with ``calibration``).
    grid : list of GridPoint, optional
        Instead of :func:`default_grid`; each family's points contiguous and safest first.
    coarse : bool, default False
        :func:`default_grid` with every other point of the variable-k grids.
    groups : sequence, optional
        A document id per sequence: certify over documents (per-document mean risk).
    min_k, max_k : int
        Bounds of the variable-k families (default 1 and the model's k).
    calibration : Calibration, optional
        For ``"bh-calibrated"``; must have been fitted on other text than ``sequences``.
    loss_bound : float, default LOSS_BOUND
        B of the loss risk.
    stop_above : (risk, c), optional
        Measure each family's grid only up to its first point with mean ``risk`` above c (see
        :func:`measure_risks`): faster, exact for that risk at ε ≤ c, valid (maybe fewer
        certified points) otherwise.
    seed, model_name : recorded in the certificate.

    Returns
    -------
    dict
        The certificate (the JSON of :func:`save_certificate`; format in the module notes).

    Raises
    ------
    CertificateError
        Bad risk, ε, δ or families, or too few sequences (checked before any forward pass).
    """
    check_certify_args(risk=risk, epsilon=epsilon, delta=delta, loss_bound=loss_bound)
    meta = model_meta(model, model_name)
    if grid is None:
        grid = default_grid(meta["top_k"], families=tuple(families), min_k=min_k, max_k=max_k, calibration=calibration,
                            coarse=coarse)
    fams = list(dict.fromkeys(g.family for g in grid))
    n_units = len(set(groups)) if groups is not None else int(sequences.shape[0])
    check_enough_units(n_units, risk=risk, epsilon=epsilon, delta=delta, num_families=len(fams), loss_bound=loss_bound)
    table = measure_risks(model, sequences, grid, batch_size=batch_size, stop_above=stop_above,
                          loss_bound=loss_bound, progress=progress)
    per_sequence = table.per_sequence(groups)
    body = recertify(per_sequence, table.points, risk=risk, epsilon=epsilon, delta=delta, loss_bound=loss_bound)
    from .outputs import environment

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": meta,
        "risk": risk,
        "epsilon": float(epsilon),
        "delta": float(delta),
        "loss_bound": float(loss_bound),
        "pvalue": "hoeffding-bentkus",
        "fwer": "fixed-sequence testing along each family's grid at delta/F; Bonferroni over the F families",
        "unit": "sequence" if groups is None else "document",
        "n_sequences": int(sequences.shape[0]),
        "grid": "coarse" if coarse else "fine",
        "stop_above": None if stop_above is None else {"risk": stop_above[0], "value": float(stop_above[1])},
        "seq_len": table.seq_len,
        "seed": seed,
        "versions": environment(),
        **body,
        "per_sequence": per_sequence,
    }


# ------------------------------------------------------------------------------------ using it
def held_out_check(model, sequences: torch.Tensor, cert: dict, *, batch_size: int = 16,
                   calibration: Calibration | None = None) -> dict:
    """Apply each family's chosen setting to held-out ``sequences`` (N, S): is the risk ≤ ε there?

    One unpatched pass and one patched pass per family with a certified setting. Returns, per
    family, the held-out mean risk (in the certificate's units), the share of held-out sequences
    above ε, the held-out mean experts per token, and ``meets_epsilon`` (mean risk ≤ ε).
    """
    check_fingerprint(cert, model)
    grid, fams = [], []
    for fam in cert["families"]:
        point = chosen_point(cert, fam)
        if point is not None:
            s = strategy_from_description(point["strategy"], calibration=calibration)
            grid.append(GridPoint(fam, point["param"], point["label"], s))
            fams.append(fam)
    out = {"n_sequences": int(sequences.shape[0]), "families": {}}
    if not grid:
        return out
    table = measure_risks(model, sequences, grid, batch_size=batch_size)
    risks = _risk_matrix(np.stack(table.top1), np.stack(table.loss_delta), cert["risk"], cert["loss_bound"])  # (F, N)
    scale = 1.0 if cert["risk"] == "top1" else cert["loss_bound"]
    for i, fam in enumerate(fams):
        mean = float(risks[i].mean() * scale)
        out["families"][fam] = {
            "label": table.points[i]["label"],
            "risk_mean": mean,
            "share_above_epsilon": float(np.mean(risks[i] * scale > cert["epsilon"])),
            "mean_k": table.points[i]["mean_k"],
            "meets_epsilon": bool(mean <= cert["epsilon"]),
        }
    return out


def split_experiment(per_sequence: dict, points: list[dict], *, risk: str, epsilon: float, delta: float,
                     n_splits: int = 400, seed: int = 0, loss_bound: float = LOSS_BOUND) -> dict:
    """The guarantee checked empirically: random calibration/test halves of a pool of sequences.

    For each of ``n_splits`` random halvings of the pool (the sequences of ``per_sequence``, every
    point measured), certify on the calibration half as :func:`recertify` does (Hoeffding-Bentkus
    p-values, fixed-sequence testing per family at δ/F, the overall cheapest certified setting)
    and take that setting's mean risk on the test half; do the same for the naive rule "the
    cheapest setting of any family whose *empirical* calibration risk is ≤ ε". When nothing is
    certified the model's own routing (risk 0) is used.

    Returns
    -------
    dict
        ``ltt_exceed`` / ``naive_exceed``: share of splits whose test-half risk exceeds ε;
        ``ltt_mean_k`` / ``naive_mean_k``: mean experts per token of the chosen settings;
        ``tolerance``: the 99.9 % binomial quantile of the exceed share if its true rate were δ,
        ``binom.ppf(0.999, n_splits, δ) / n_splits`` (the splits share one pool, so it is a
        reference, not an exact test); ``n_calibration``, ``n_test``, ``n_splits``.
    """
    from scipy import stats

    check_certify_args(risk=risk, epsilon=epsilon, delta=delta, loss_bound=loss_bound)
    if any(row is None for row in per_sequence["top1"]):
        raise CertificateError("the split experiment needs every grid point measured")
    scale = 1.0 if risk == "top1" else loss_bound
    units = _risk_matrix(np.asarray(per_sequence["top1"], dtype=np.float64),
                         np.asarray(per_sequence["loss_delta"], dtype=np.float64), risk, loss_bound)  # (m, N)
    cost = np.asarray([p["mean_k"] for p in points], dtype=np.float64)  # (m,)
    slices = _family_slices([p["family"] for p in points])
    m, n = units.shape
    n_cal = n // 2
    eps, d_f = epsilon / scale, delta / len(slices)
    need = min_sequences(eps, d_f)
    if n_cal < need:
        raise CertificateError(f"pool too small: calibration halves of {n_cal}, need at least {need}")
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(n) for _ in range(n_splits)])  # (r, N)
    cal = np.zeros((n_splits, n), dtype=bool)
    np.put_along_axis(cal, perms[:, :n_cal], True, axis=1)  # (r, N)
    cal_mean = cal.astype(np.float64) @ units.T / n_cal  # (r, m)
    test_mean = (~cal).astype(np.float64) @ units.T / (n - n_cal)  # (r, m)
    pvals = hb_pvalue(cal_mean, n_cal, eps)  # (r, m)
    best = np.full(n_splits, -1)  # (r,) overall cheapest certified grid index, -1: none
    for idx in slices.values():
        j = fixed_sequence_test(pvals[:, idx.start : idx.stop], d_f)  # (r,)
        fam_cost = np.where(np.arange(len(idx)) < j[:, None], cost[idx.start : idx.stop], np.inf)  # (r, |idx|)
        pick = idx.start + fam_cost.argmin(axis=1)  # (r,)
        better = (j > 0) & ((best < 0) | (cost[pick] < cost[np.maximum(best, 0)]))
        best = np.where(better, pick, best)
    rows = np.arange(n_splits)
    ltt_risk = np.where(best >= 0, test_mean[rows, np.maximum(best, 0)], 0.0)
    ltt_k = np.where(best >= 0, cost[np.maximum(best, 0)], cost.max())
    naive_cost = np.where(cal_mean <= eps, cost, np.inf)  # (r, m)
    naive = naive_cost.argmin(axis=1)  # (r,)
    has = np.isfinite(naive_cost[rows, naive])
    naive_risk = np.where(has, test_mean[rows, naive], 0.0)
    naive_k = np.where(has, cost[naive], cost.max())
    return {
        "risk": risk, "epsilon": float(epsilon), "delta": float(delta), "n_splits": int(n_splits),
        "n_calibration": int(n_cal), "n_test": int(n - n_cal),
        "ltt_exceed": float(np.mean(ltt_risk > eps)), "naive_exceed": float(np.mean(naive_risk > eps)),
        "ltt_mean_k": float(ltt_k.mean()), "naive_mean_k": float(naive_k.mean()),
        "tolerance": float(stats.binom.ppf(0.999, n_splits, delta) / n_splits),
    }


_STRATEGIES = {"topk": TopK, "topp": TopP, "weight_ratio": WeightRatio, "bh": BH}
_POSITIONAL = {"topk": "k", "topp": "p", "weight_ratio": "beta", "bh": "alpha"}


def strategy_from_description(desc: dict, *, calibration: Calibration | None = None) -> Strategy:
    """Rebuild a Strategy from its :meth:`Strategy.describe` dict (as stored in certificates)."""
    name = desc.get("name")
    if name not in _STRATEGIES:
        raise CertificateError(f"unknown strategy {name!r} in certificate; available: {', '.join(_STRATEGIES)}")
    kwargs = {k: v for k, v in desc.items() if k not in ("name", _POSITIONAL[name])}
    if name == "bh" and kwargs.get("pvalues") == "calibrated":
        if calibration is None:
            raise CertificateError("the certified BH setting uses a calibrated null: pass its calibration")
        kwargs["calibration"] = calibration
    return _STRATEGIES[name](desc[_POSITIONAL[name]], **kwargs)


def save_certificate(cert: dict, path: str | Path) -> Path:
    """Write ``cert`` as JSON (atomically)."""
    from .outputs import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(cert, indent=1, allow_nan=False))
    return path


def load_certificate(path: str | Path) -> dict:
    """Read and check a certificate.json (format and version)."""
    path = Path(path)
    if not path.is_file():
        raise CertificateError(f"certificate not found: {path}")
    try:
        cert = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CertificateError(f"cannot read certificate {path}: {exc}") from None
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise CertificateError(f"not a bh-routing certificate: {path}")
    if cert.get("format_version") != FORMAT_VERSION:
        raise CertificateError(f"certificate format version {cert.get('format_version')!r} is not supported "
                               f"(this bh-routing reads {FORMAT_VERSION!r}): {path}")
    return cert


def check_fingerprint(cert: dict, model) -> None:
    """Raise CertificateError unless ``cert`` was made on ``model`` (same router weights)."""
    have = model_fingerprint(model)
    want = cert["model"]["fingerprint"]
    if have != want:
        raise CertificateError(
            f"certificate was made on another model ({cert['model'].get('name', '?')}, {want[:19]}…), "
            f"not this one ({have[:19]}…): a certificate holds only for its own model"
        )


def certified_strategy(path: str | Path, model, family: str | None = None, *,
                       calibration: Calibration | None = None) -> Strategy:
    """The certified Strategy of a certificate.json, ready for ``patched(model, strategy)``.

    Parameters
    ----------
    path : str or Path
        A certificate.json written by ``bh-routing certify`` or :func:`save_certificate`
        (format in the notes of :mod:`bh_routing.analysis.certify`).
    model : transformers MoE model
        Must be the model the certificate was made on (checked by fingerprint).
    family : str, optional
        ``"topk"``, ``"topp"``, ``"weight_ratio"``, ``"bh"`` or ``"bh-calibrated"``; default the
        family whose certified setting uses the fewest experts per token.
    calibration : Calibration, optional
        Needed when the chosen setting is BH with a calibrated null.

    Raises
    ------
    CertificateError
        Another model, an unknown family, or no certified setting.
    """
    cert = load_certificate(path)
    check_fingerprint(cert, model)
    point = chosen_point(cert, family)
    if point is None:
        which = f"family {family!r}" if family else "any family"
        raise CertificateError(
            f"the certificate certifies no setting of {which} at epsilon={cert['epsilon']:g}, delta={cert['delta']:g}"
        )
    return strategy_from_description(point["strategy"], calibration=calibration)


# ------------------------------------------------------------------------------------ a whole run
CERTIFICATE_JSON = "certificate.json"
FRONTIER_POINTS = 12  # ε values of the certified-frontier figure


def grid_points(cert: dict) -> list[dict]:
    """The certificate's grid points in test order (every family's grid, concatenated)."""
    return [p for entry in cert["families"].values() for p in entry["grid"]]


def frontier_epsilons(cap: float, *, risk: str, delta: float, n: int, num_families: int,
                      loss_bound: float = LOSS_BOUND) -> list[float]:
    """FRONTIER_POINTS ε values from the smallest certifiable with n units up to ``cap``."""
    scale = 1.0 if risk == "top1" else loss_bound
    lo = 1.0 - (delta / num_families) ** (1.0 / n)  # (1 - ε)^n = δ/F: the smallest ε any certificate reaches
    lo = min(max(lo * scale * 1.05, cap / FRONTIER_POINTS), cap)
    return [float(e) for e in np.round(np.linspace(lo, cap, FRONTIER_POINTS), 4)]


def check_families(families, *, calibrated: bool = False) -> tuple[str, ...]:
    """The families as a tuple, or CertificateError for unknown names (before any model loads).

    ``calibrated``: also accept ``"bh-calibrated"`` (only :func:`default_grid` with a calibration
    fitted on other text; runs and the command certify BH with the empirical null).
    """
    known = FAMILIES + (("bh-calibrated",) if calibrated else ())
    fams = tuple(families)
    bad = [f for f in fams if f not in known]
    if bad or not fams:
        raise CertificateError(f"unknown strategy families {bad}; available: {', '.join(known)}")
    return fams


def certified_rows(cert: dict, *, epsilon: float | None = None, delta: float | None = None,
                   risk: str | None = None) -> list[dict]:
    """One row per family: the certified setting at (ε, δ, risk), re-certified from the saved
    per-sequence risks when any of them differs from the certificate's (no model runs).

    Rows: ``family``, ``setting`` (label or None), ``mean_k``, ``compute_fraction``,
    ``risk_mean``, ``upper_bound``, ``num_certified``, ``measured``, ``best`` (cheapest family).
    """
    risk = cert["risk"] if risk is None else risk
    epsilon = cert["epsilon"] if epsilon is None else epsilon
    delta = cert["delta"] if delta is None else delta
    body = cert
    if (risk, epsilon, delta) != (cert["risk"], cert["epsilon"], cert["delta"]):
        body = recertify(cert["per_sequence"], grid_points(cert), risk=risk, epsilon=epsilon, delta=delta,
                         loss_bound=cert["loss_bound"])
    rows = []
    for fam, entry in body["families"].items():
        p = None if entry["chosen"] is None else entry["grid"][entry["chosen"]]
        rows.append({
            "family": fam, "setting": None if p is None else p["label"],
            "mean_k": None if p is None else p["mean_k"],
            "compute_fraction": None if p is None else p["compute_fraction"],
            "risk_mean": None if p is None else p["risk_mean"],
            "upper_bound": None if p is None else p["upper_bound"],
            "num_certified": entry["num_certified"], "measured": sum(q["measured"] for q in entry["grid"]),
            "best": fam == body["best_family"],
        })
    return rows
