"""Does the certificate hold? Its settings applied to held-out sequences, and the guarantee checked
over many random calibration/test splits of one pool."""

from __future__ import annotations

import numpy as np
import torch

from ...core import Calibration
from ...core.risk_control import fixed_sequence_test, hb_pvalue, min_sequences
from ...models.certificate import check_fingerprint, chosen_point, strategy_from_description
from .grid import LOSS_BOUND, CertificateError, GridPoint, check_certify_args
from .risks import family_slices, measure_risks, risk_matrix


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
    risks = risk_matrix(np.stack(table.top1), np.stack(table.loss_delta), cert["risk"], cert["loss_bound"])  # (F, N)
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
    units = risk_matrix(np.asarray(per_sequence["top1"], dtype=np.float64),
                         np.asarray(per_sequence["loss_delta"], dtype=np.float64), risk, loss_bound)  # (m, N)
    cost = np.asarray([p["mean_k"] for p in points], dtype=np.float64)  # (m,)
    slices = family_slices([p["family"] for p in points])
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
