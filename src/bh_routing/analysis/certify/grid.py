"""What a certificate is asked for: the risk, ε and δ, the strategy families and their grids.

The checks here run before any model loads (one-line :class:`CertificateError` messages); the
grid of each family is ordered from the safest setting to the cheapest, the order fixed-sequence
testing walks (:mod:`bh_routing.analysis.certify.procedure`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...core import BH, Calibration, Strategy, TopK, TopP, WeightRatio
from ...core.families import BUILTIN, StrategySpecError, get_family
from ...models.certificate import CertificateError
from ...core.risk_control import min_sequences

RISKS = ("top1", "loss")
LOSS_BOUND = 1.0  # B, nats/token: the loss-increase risk is clipped to [0, B] (see the module notes)
FAMILIES = tuple(BUILTIN)  # the built-in families; "bh-calibrated" too when a calibration is given
DEFAULT_EPSILON = 0.1  # the certify step of `bh-routing run`: top-1 disagreement at most 10 % ...
DEFAULT_DELTA = 0.1  # ... with probability at least 90 %
DEFAULT_RISK = "top1"

# grids, safest first (fixed-sequence testing walks them in this order)
# (on the embedded model p = 0.9, β = 0.02 and α = 0.95 already drop a few tokens' 8th expert;
# BH with the empirical null falls from 8 to ~3.6 experts between α = 0.95 and 0.5)
TOPP_GRID = (0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.4, 0.3, 0.2)
RATIO_GRID = (0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5)
ALPHA_GRID = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.3, 0.1, 0.05, 0.01)


@dataclass


class GridPoint:
    """One setting of a family's grid."""

    family: str  # a family's name, or "bh-calibrated"
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


def check_families(families, *, calibrated: bool = False) -> tuple[str, ...]:
    """The families as a tuple, or CertificateError for unknown names (before any model loads).

    ``calibrated``: also accept ``"bh-calibrated"`` (only :func:`default_grid` with a calibration
    fitted on other text; runs and the command certify BH with the empirical null).
    """
    known = FAMILIES + (("bh-calibrated",) if calibrated else ())
    fams, bad = [], []
    for f in families:
        try:
            fams.append(f if f in known else get_family(f).name)
        except StrategySpecError:
            bad.append(f)
    if bad or not fams:
        raise CertificateError(f"unknown strategy families {bad}; available: {', '.join(known)}, or module:Class")
    return tuple(fams)

def check_request(*, risk: str, epsilon: float, delta: float, families, units: int | None = None) -> tuple[str, ...]:
    """Every check of a certify request before a model loads: risk, ε, δ, the families, and (with
    ``units``, the calibration units there will be) whether any certificate is possible."""
    check_certify_args(risk=risk, epsilon=epsilon, delta=delta)
    fams = check_families(families)
    if units is not None:
        check_enough_units(units, risk=risk, epsilon=epsilon, delta=delta, num_families=len(fams))
    return fams


# ------------------------------------------------------------------------------------ the grid


def default_grid(
    model_top_k: int,
    *,
    families=FAMILIES,
    min_k: int = 1,
    max_k: int | None = None,
    calibration: Calibration | None = None,
    coarse: bool = False,
    directions: dict | None = None,
) -> list[GridPoint]:
    """The ordered grid of every family, safest setting first.

    ``topk``: k = K, K-1, ..., 1. ``topp``: :data:`TOPP_GRID` (p large → small). ``weight_ratio``:
    :data:`RATIO_GRID` (β small → large). ``bh``: BH with the empirical null, :data:`ALPHA_GRID`
    (α large → small). ``bh-calibrated``: the same α with the conformal null of ``calibration``.
    Any other family (the entropy ladder, a user's rule): its class's ``grid``, safest first by
    ``directions[family]`` (+1: more experts as the knob rises, -1: fewer; measured on calibration
    text by :func:`bh_routing.analysis.knobs.knob_profile`). The variable-k families use ``min_k``
    and ``max_k`` (default the model's k) where their constructor takes them. ``coarse``: every
    other point of the variable-k grids (fewer passes; top-k keeps every k).
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
        elif fam not in ("bh", "bh-calibrated"):
            if directions is None or fam not in directions:
                raise CertificateError(f"family {fam!r} needs its knob's direction (measured on calibration text)")
            grid += family_grid(fam, directions[fam], min_k=min_k, max_k=max_k)[::step]
        else:
            method = "empirical" if fam == "bh" else "calibrated"
            cal = calibration if method == "calibrated" else None
            grid += [
                GridPoint(fam, a, f"BH-{method}(α={a:g})", BH(a, min_k=min_k, max_k=max_k, pvalues=method, calibration=cal))
                for a in alpha
            ]
    return grid


def family_grid(family: str, direction: int, *, min_k: int = 1, max_k: int | None = None) -> list[GridPoint]:
    """A family's own grid (its class's ``grid``) as grid points, safest (most experts) first."""
    from ..settings import RoutingSettings, setting_label

    cls = get_family(family)
    values = sorted(set(cls.grid), reverse=direction > 0)
    rs = RoutingSettings(min_k=min_k, max_k=max_k)
    return [GridPoint(cls.name, v, setting_label(cls.name, v), rs.strategy(cls.name, v)) for v in values]
