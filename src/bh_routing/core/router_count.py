"""BH's rejection count without sorting the p-values, for ``BH(selection="router")``.

With router selection BH only answers *how many*: :math:`\\hat k = \\max\\{k : C(k) \\ge k\\}`
with :math:`C(k) = \\#\\{e : p_e \\le t_k\\}`, :math:`t_k = k\\alpha/E` (the step-up count of
Benjamini & Hochberg 1995 written with counts instead of order statistics); the experts are the
router's own top :math:`\\hat k`. Every function here returns exactly the count
:func:`bh_routing.bh_count` gives on the same p-values (tests check it), clamped to ``max_k``:

* :func:`count_by_buckets` - any p-values, any device: each p-value goes to the bucket of the
  smallest k whose threshold it meets, cumulative bucket counts give C(k); one pass, no sort.
* :func:`count_rank_consistent` (CPU) - p-values that decrease with the standardised score
  within a token (empirical and standardised nulls): the k-th smallest p-value is that of the
  k-th largest logit, and ``p <= t_k`` is a comparison of the score with a threshold score, so
  no p-value is computed at all.
* :func:`count_calibrated` (CPU) - per-expert conformal p-values: ``p_e <= t_k`` is
  ``z_e > U[e, k]`` for threshold logits U read once from the calibration table, so C(k) is a
  count of logits above thresholds, for k = 1, 2, ... only as far as a token needs.

The two CPU functions run their per-token loops compiled (:mod:`bh_routing.core._kernels`).
"""

from __future__ import annotations

import numpy as np
import torch

from ._kernels import count_calibrated_rows, count_sorted_rows
from .bh import _arange, bh_thresholds
from .pvalues import MAD_TO_SD, normal_tail


def count_by_buckets(p: torch.Tensor, alpha: float, max_k: int) -> torch.Tensor:
    """BH count (T,) of p-values (T, E), clamped to ``max_k``: buckets and cumulative counts, no sort.

    The bucket of p is ``#{k : t_k < p}`` (p meets t_{b+1} and every larger threshold; E: none),
    a binary search in the E thresholds; ``C(k)`` is the cumulative count of buckets below k.
    """
    t, n = p.shape
    dtype = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
    thresholds = bh_thresholds(alpha, n, dtype, p.device)  # (E,)
    bucket = torch.searchsorted(thresholds, p.to(dtype).contiguous(), side="left")  # (T, E) in [0, E]
    hist = torch.zeros(t, n + 1, dtype=torch.int64, device=p.device)
    hist.scatter_add_(1, bucket, torch.ones_like(bucket))  # (T, E + 1)
    ranks = _arange(1, n + 1, p.device)  # (E,)
    meets = hist[:, :n].cumsum(dim=1) >= ranks  # (T, E): C(k) >= k
    return (meets * ranks).amax(dim=1).clamp(max=max_k)  # (T,)


def count_rank_consistent(
    z: torch.Tensor, max_k: int, cutoffs: torch.Tensor, *, strict: bool, above_median: bool = False, scratch: bool = False
) -> torch.Tensor:
    """BH count (T,) of p-values that decrease with the standardised score, clamped to ``max_k`` (CPU).

    z: (T, E) tempered logits, float32 or float64. One sort of each token's logits gives the
    lower median c = z_(m), m = (E - 1) // 2; the MAD, the m-th smallest |c - z| (the
    deviations fall then rise along the sorted logits, so it is the least, over windows of
    m + 1 consecutive sorted logits, of the larger deviation at the window's two ends: the same
    element, so the same float, as the full path's median of deviations); and the order
    statistics: the k-th smallest p-value is that of the k-th largest logit, whose negative
    z-score ``neg`` (:func:`~bh_routing.core.pvalues.neg_zscores`' arithmetic) meets t_k when
    ``neg <= cutoffs[E - k]`` (normal cutoffs, ``strict=False``) or ``float32(-neg) >
    cutoffs[E - k]`` (conformal score thresholds, ``strict=True``); cutoffs (E,) are indexed by
    sorted position. ``above_median``: no threshold is met at a score <= 0 (every t_k < 1/2),
    so only the logits above the median are scored. ``scratch``: z is a temporary
    of the caller's (a tempered or upcast copy), sorted in place. The row loop is
    :mod:`bh_routing.core._kernels`.
    """
    zn = z.detach().numpy()
    ascending = _sorted_in_place(zn) if scratch else np.sort(zn, axis=-1)
    j0 = (z.shape[1] - 1) // 2 + 1 if above_median else 0
    k = count_sorted_rows(
        ascending, cutoffs.contiguous().numpy(), strict=strict,
        mad_to_sd=zn.dtype.type(MAD_TO_SD), j0=j0, max_k=max_k,
    )  # as neg_zscores: MAD_TO_SD * mad in the logits' float type
    return torch.from_numpy(k)


def _sorted_in_place(a: np.ndarray) -> np.ndarray:
    a.sort(axis=-1)
    return a


def descending_order(scores: torch.Tensor, width: int) -> torch.Tensor:
    """(T, width) expert ids by descending score, ties by lower index: one int64 key sort per row.

    For rank-consistent p-values (standardised null) and float32 or half logits this is the
    p-value order with ties broken by the logit, as :func:`bh_routing.bh_count` makes it with
    ``preference=logits``: the p-value falls as the logit rises, equal logits have equal
    p-values, and equal p-values go to the larger logit.
    """
    from .bh import _orderable_desc

    t, n = scores.shape
    shift = max(1, (n - 1).bit_length())
    keys = np.left_shift(_orderable_desc(scores.detach().to(torch.float32).numpy()), shift, dtype=np.int64)  # (T, E)
    keys |= np.arange(n, dtype=np.int64)
    keys.sort(axis=-1)
    return torch.from_numpy(keys[:, :width] & ((1 << shift) - 1))  # (T, W)


def normal_cutoffs(alpha: float, num: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Cutoffs x (E,) with ``normal_tail(v) <= t_k`` exactly when ``v <= x[k - 1]``, v of ``dtype``.

    Found by bisection on the bit patterns (the tail is non-decreasing in v), then checked on
    the 2,048 floats either side of each cutoff, the only ones whose tail value lies within
    rounding of t_k; None if the check fails (the caller then computes the tail itself).
    """
    key = (alpha, num, dtype)
    if key not in _CUTOFFS:
        _CUTOFFS[key] = _normal_cutoffs(alpha, num, dtype)
    return _CUTOFFS[key]


_CUTOFFS: dict = {}


def _normal_cutoffs(alpha: float, num: int, dtype: torch.dtype) -> torch.Tensor | None:
    bits, itype = (64, torch.int64) if dtype == torch.float64 else (32, torch.int32)
    t = bh_thresholds(alpha, num, dtype)  # (E,)
    top = torch.tensor(torch.finfo(dtype).max, dtype=dtype)
    lo = _to_ordered(-top.expand(num).clone(), bits, itype).to(torch.int64)  # tail(lo) = 0 <= t_k
    hi = _to_ordered(top.expand(num).clone(), bits, itype).to(torch.int64)  # tail(max) = 1
    always = normal_tail(top.expand(num)) <= t  # t_k = 1: every v meets it
    for _ in range(bits + 1):  # invariant: tail(lo) <= t < tail(hi)
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        below = normal_tail(_from_ordered(mid.to(itype), dtype)) <= t
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    cut = _from_ordered(lo.to(itype), dtype)  # (E,)
    offsets = torch.arange(-2048, 2049, dtype=torch.int64)  # (W,)
    window = _from_ordered((lo[:, None] + offsets).to(itype), dtype)  # (E, W)
    consistent = (normal_tail(window) <= t[:, None]) == (window <= cut[:, None])
    if not bool(consistent[~always].all()):
        return None
    return torch.where(always, torch.full_like(cut, float("inf")), cut)


def _to_ordered(x: torch.Tensor, bits: int, itype: torch.dtype) -> torch.Tensor:
    """Integers that order like the floats ``x`` (an involution with :func:`_from_ordered`)."""
    i = x.view(itype)
    return i ^ ((i >> (bits - 1)) & torch.iinfo(itype).max)


def _from_ordered(i: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    bits = torch.iinfo(i.dtype).bits
    return (i ^ ((i >> (bits - 1)) & torch.iinfo(i.dtype).max)).view(dtype)


def conformal_thresholds(
    null_sorted: torch.Tensor, null_count: torch.Tensor, alpha: float, num: int
) -> torch.Tensor:
    """Score thresholds (E', E): conformal ``p <= t_k`` exactly when ``score > U[:, k - 1]``.

    null_sorted: (E', R) ascending tables (one per expert, or one pooled row), ``-inf`` padding
    on the left; null_count (E',); ``num`` = E, the number of hypotheses BH tests. The p-value
    ``(1 + c) / (n + 1)`` (float32, as conformal_pvalues computes it) is non-decreasing in
    ``c = #{null >= score}``; with ``m`` the largest c whose p-value meets t_k, ``c <= m`` is
    the score above the (m + 1)-th largest null value (``-inf`` if m >= R, ``+inf`` if no c does).
    """
    rows, r = null_sorted.shape
    counts = torch.arange(r + 1, dtype=torch.float32)  # (R + 1,)
    n = null_count.cpu().to(torch.float32).reshape(rows, 1)  # (E', 1)
    p = ((1.0 + counts) / (n + 1.0)).clamp(max=1.0).contiguous()  # (E', R + 1): p-value of each count
    t = bh_thresholds(alpha, num, torch.float32)  # (E,)
    m = torch.searchsorted(p, t.expand(rows, num).contiguous(), side="right") - 1  # (E', E)
    inf = torch.full((rows, 1), float("inf"))
    # position R - m of [-inf, table, +inf] is the (m + 1)-th largest: m >= R -> -inf, m = -1 -> +inf
    padded = torch.cat([-inf, null_sorted.cpu().float(), inf], dim=1)  # (E', R + 2)
    return padded.gather(1, (r - m).clamp(min=0))  # (E', E)


def count_calibrated(z: torch.Tensor, columns: torch.Tensor, max_k: int) -> torch.Tensor:
    """BH count (T,) of per-expert conformal p-values, clamped to ``max_k``, from threshold logits (CPU).

    z: (T, E) float32 tempered logits; columns: (E, E) contiguous, ``columns[k - 1, e] = U[e, k - 1]``
    (the transpose of :func:`conformal_thresholds`), non-increasing in k, so ``C(k) = #{e : z_e >
    U[e, k - 1]}`` is non-decreasing and ``C(k) >= k`` needs ``k <= C(E)``: each token counts C(E),
    then C(k) for k = 1, 2, ... up to C(E) or max_k, whichever comes first (one vectorised pass over
    its E logits per k). The row loop is :mod:`bh_routing.core._kernels`.
    """
    return torch.from_numpy(count_calibrated_rows(z.detach().numpy(), columns.numpy(), max_k))
