"""Learn-then-Test on the measured risks: the certified settings of every family.

Hoeffding-Bentkus p-values per grid point, fixed-sequence testing along each family's grid at
δ/F, Bonferroni over the F families (:mod:`bh_routing.core.risk_control`); :func:`certify`
measures and certifies, :func:`recertify` certifies again from saved risks (no model).
"""

from __future__ import annotations

import numpy as np
import torch

from ...core.families import RANK_BASELINES as FAMILIES_WITH_GRIDS, get_family

from ...core import Calibration
from ...core.risk_control import TooFewSequencesError, hb_pvalue, hb_upper_bound, learn_then_test
from ...models.environment import environment
from ...models.certificate import FORMAT, FORMAT_VERSION, chosen_point, grid_points, model_meta
from .grid import (
    DEFAULT_DELTA, DEFAULT_EPSILON, DEFAULT_RISK, FAMILIES, LOSS_BOUND, CertificateError, GridPoint,
    check_certify_args, check_enough_units, check_families, default_grid, needed_units,
)
from .risks import by_group, family_slices, measure_risks, risk_matrix

FRONTIER_POINTS = 12  # ε values of the certified-frontier figure


def recertify(per_sequence: dict, points: list[dict], *, risk: str, epsilon: float, delta: float,
              loss_bound: float = LOSS_BOUND, infeasible_ok: bool = False) -> dict:
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
    infeasible_ok : bool, default False
        With fewer units than any certificate at (ε, δ/F) needs: certify nothing, report each point's
        risk, Hoeffding-Bentkus p-value and (1 − δ/F) upper bound, and say why in ``infeasible``,
        instead of raising CertificateError.

    Returns
    -------
    dict
        ``{"families": {...}, "best_family": ..., "delta_per_family": ..., "n_units": ...,
        "min_units": ..., "infeasible": None or the one-line reason nothing could be certified}`` (see the module notes for each point's fields).
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
    units = by_group(risk_matrix(t, l, risk, loss_bound), per_sequence.get("groups"))  # (m', n)
    row_of = {i: r for r, i in enumerate(measured)}
    slices = family_slices([p["family"] for p in points])
    d_f = delta / len(slices)
    scale = 1.0 if risk == "top1" else loss_bound
    n = int(units.shape[1])
    try:
        need = check_enough_units(n, risk=risk, epsilon=epsilon, delta=delta, num_families=len(slices),
                                  loss_bound=loss_bound,
                                  what="documents" if per_sequence.get("groups") is not None else "sequences")
        infeasible = None
    except CertificateError as exc:
        if not infeasible_ok:
            raise
        need, infeasible = needed_units(risk=risk, epsilon=epsilon, delta=delta, num_families=len(slices),
                                        loss_bound=loss_bound), str(exc)
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
            if infeasible is None:
                try:
                    res = learn_then_test(units[rows], epsilon=epsilon / scale, delta=d_f,
                                          cost=[points[i]["mean_k"] for i in prefix])
                except TooFewSequencesError as exc:  # unreachable after the check above; one line anyway
                    raise CertificateError(str(exc)) from None
                chosen, num = res.chosen, res.num_certified
                mean, pvalues, bounds = res.risk_mean, res.pvalues, res.upper_bounds
            else:  # no certificate is possible with n units: the same p-values and bounds show how far each setting is
                mean = units[rows].mean(axis=1)  # (|prefix|,)
                pvalues, bounds = hb_pvalue(mean, n, epsilon / scale), hb_upper_bound(mean, n, d_f)
            for j, i in enumerate(prefix):
                grid[j].update({
                    "measured": True,
                    "risk_mean": float(mean[j] * scale),
                    "p_value": float(pvalues[j]),
                    "upper_bound": float(bounds[j] * scale),
                    "certified": bool(j < num),
                    "clip_high": float(np.mean(l[row_of[i]] > loss_bound)),
                    "clip_low": float(np.mean(l[row_of[i]] < 0.0)),
                })
        families[fam] = {"chosen": chosen, "num_certified": num, "grid": grid}
    chosen = {f: v["grid"][v["chosen"]]["mean_k"] for f, v in families.items() if v["chosen"] is not None}
    return {
        "families": families,
        "best_family": min(chosen, key=chosen.get) if chosen else None,
        "delta_per_family": d_f,
        "n_units": n,
        "min_units": need,
        "infeasible": infeasible,
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
    infeasible_ok: bool = False,
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
    infeasible_ok : bool, default False
        Too few units (``groups``: documents) for any certificate at (ε, δ/F): measure anyway and
        return a certificate that certifies nothing and says why (``infeasible``); its per-unit
        risks still give :func:`certified_frontier` at larger ε. Default: raise before any pass.

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
    fams = list(dict.fromkeys(g.family for g in grid)) if grid is not None else list(check_families(families, calibrated=True))
    n_units = len(set(groups)) if groups is not None else int(sequences.shape[0])
    if not infeasible_ok:
        check_enough_units(n_units, risk=risk, epsilon=epsilon, delta=delta, num_families=len(fams), loss_bound=loss_bound)
    if grid is None:
        directions = knob_directions(model, sequences, fams, min_k=min_k, max_k=max_k)
        grid = default_grid(meta["top_k"], families=tuple(fams), min_k=min_k, max_k=max_k, calibration=calibration,
                            coarse=coarse, directions=directions)
    table = measure_risks(model, sequences, grid, batch_size=batch_size, stop_above=stop_above,
                          loss_bound=loss_bound, progress=progress)
    per_sequence = table.per_sequence(groups)
    body = recertify(per_sequence, table.points, risk=risk, epsilon=epsilon, delta=delta, loss_bound=loss_bound,
                     infeasible_ok=infeasible_ok)

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


def frontier_epsilons(cap: float, *, risk: str, delta: float, n: int, num_families: int,
                      loss_bound: float = LOSS_BOUND) -> list[float]:
    """FRONTIER_POINTS ε values from the smallest certifiable with n units up to ``cap``."""
    scale = 1.0 if risk == "top1" else loss_bound
    lo = 1.0 - (delta / num_families) ** (1.0 / n)  # (1 - ε)^n = δ/F: the smallest ε any certificate reaches
    lo = min(max(lo * scale * 1.05, cap / FRONTIER_POINTS), cap)
    return [float(e) for e in np.round(np.linspace(lo, cap, FRONTIER_POINTS), 4)]


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


#: The families whose certify grid is fixed in :mod:`.grid`; every other family's is its own grid,
#: ordered by its knob's measured direction.
FIXED_GRIDS = (*FAMILIES_WITH_GRIDS, "bh", "bh-calibrated")
#: Calibration sequences the direction of a knob is measured on (expert counts only, never a risk).
DIRECTION_SEQUENCES = 8


def knob_directions(model, sequences: torch.Tensor, families, *, min_k: int = 1, max_k: int | None = None) -> dict:
    """family -> +1/-1 for each family without a fixed grid: its knob's direction, measured in patch
    mode at its grid's two ends on the first :data:`DIRECTION_SEQUENCES` calibration sequences
    (:func:`bh_routing.analysis.knobs.knob_profile`, which also refuses a knob that does not move k)."""
    from ..knobs import knob_profile
    from ..settings import RoutingSettings

    rs = RoutingSettings(min_k=min_k, max_k=max_k)
    out = {}
    for fam in families:
        if fam in FIXED_GRIDS:
            continue
        grid = get_family(fam).grid
        prof = knob_profile(model, sequences[:DIRECTION_SEQUENCES], fam, lambda v, f=fam: rs.strategy(f, v),
                            (min(grid), max(grid)))
        out[fam] = prof["direction"]
    return out
