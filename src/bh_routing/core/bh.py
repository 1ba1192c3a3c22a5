"""The Benjamini-Hochberg step-up procedure, batched over leading dimensions."""

from __future__ import annotations

import numpy as np
import torch

from ._paths import compiling, host_fast
from ._validate import check_alpha, check_k_bounds, check_pvalues


def _work_dtype(p: torch.Tensor) -> torch.dtype:
    # half precision cannot resolve k * alpha / E near the boundary: compare in float32 at least
    return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32


def bh_count(
    p_values: torch.Tensor,
    alpha: float,
    *,
    min_k: int = 0,
    max_k: int | None = None,
    preference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of BH rejections per row and the ascending p-value order.

    Parameters
    ----------
    p_values : torch.Tensor, shape (..., E)
        p-values in [0, 1].
    alpha : float
        Target false-discovery rate, in (0, 1].
    min_k, max_k : int, keyword-only
        The count is clamped to ``[min_k, max_k]`` (``max_k=None`` means E).
    preference : torch.Tensor, shape (..., E), optional, keyword-only
        Breaks ties among equal p-values: the larger preference first (a router's logits), then
        the lower index. Without it ties go by index. The count does not depend on it.

    Returns
    -------
    k : torch.LongTensor, shape (...)
        ``clamp(max{k : p_(k) <= k alpha / E}, min_k, max_k)`` (0 when no k qualifies).
    order : torch.LongTensor, shape (..., E)
        Expert indices sorted by ascending p-value, ties broken as above.
    """
    check_pvalues(p_values)
    alpha = check_alpha(alpha)
    check_k_bounds(min_k, max_k, p_values.shape[-1])
    _check_preference(preference, p_values)
    return _bh_count(p_values, alpha, min_k, max_k, preference=preference)


def _check_preference(preference: torch.Tensor | None, p_values: torch.Tensor) -> None:
    if preference is None:
        return
    if not isinstance(preference, torch.Tensor) or not preference.is_floating_point():
        raise TypeError("preference must be a floating torch.Tensor")
    if preference.shape != p_values.shape:
        raise ValueError(
            f"preference must have the shape of p_values {tuple(p_values.shape)}, got {tuple(preference.shape)}"
        )


def _bh_count(
    p_values: torch.Tensor,
    alpha: float,
    min_k: int,
    max_k: int | None,
    *,
    width: int | None = None,
    preference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """bh_count without validation, for callers that produced valid p-values themselves.

    ``width``: return only the first ``width`` columns of the order (the strategies' padded width).
    ``preference``: (..., E) tie-breaker among equal p-values, larger first (then lower index).
    """
    n = p_values.shape[-1]
    p = p_values.to(_work_dtype(p_values))
    thresholds = bh_thresholds(alpha, n, p.dtype, p.device)  # (E,)
    if _numpy_sortable(p) and (preference is None or n <= _MAX_TIE_EXPERTS):
        k, order = _bh_count_keys(p, thresholds, n if width is None else width, preference)
    else:
        if preference is None:
            sorted_p, order = torch.sort(p, dim=-1, stable=True)  # (..., E)
        else:  # by preference (descending, ties by index), then stably by p-value
            first = torch.sort(preference, dim=-1, descending=True, stable=True).indices  # (..., E)
            sorted_p, second = torch.sort(p.gather(-1, first), dim=-1, stable=True)  # (..., E)
            order = first.gather(-1, second)  # (..., E)
        below = sorted_p <= thresholds  # (..., E)
        # step-up: the largest k whose sorted p-value is under its threshold (0 if none)
        k = (below * _arange(1, n + 1, p.device)).amax(dim=-1)  # (...)
        if width is not None:
            order = order[..., :width]
    k = k.clamp(min=min_k, max=n if max_k is None else max_k)
    return k, order


def bh_thresholds(alpha: float, num: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """The BH thresholds ``t_k = (k / E) * alpha``, k = 1..E, as compared with p-values of ``dtype``.

    Same arithmetic as statsmodels' fdr_bh, in float64 whatever the p-values' dtype. A float32
    p-value is <= t exactly when it is <= the largest float32 not above t, so the thresholds are
    rounded down to ``dtype``: ``p <= t_k`` in ``dtype`` is then the float64 comparison exactly.
    """
    device = torch.device(device)
    if compiling():  # traced: computed in the graph (constant-folded), no global cache
        ranks = torch.arange(1, num + 1, dtype=torch.float64, device=device)  # (E,)
        return _round_down((ranks / num) * alpha, dtype)
    key = (alpha, num, dtype, device)
    cached = _THRESHOLDS.get(key)
    if cached is None:
        if device.type == "cpu":
            ranks = torch.arange(1, num + 1, dtype=torch.float64)  # (E,)
            cached = _round_down((ranks / num) * alpha, dtype)  # (E,)
        else:  # kept on the device: a copy from the host on every call would synchronise
            cached = bh_thresholds(alpha, num, dtype).to(device)
        if len(_THRESHOLDS) > 256:
            _THRESHOLDS.clear()
        _THRESHOLDS[key] = cached
    return cached


_THRESHOLDS: dict = {}


def _arange(start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.arange(start, stop, device=device)`` (int64), cached: on a GPU each new one is a kernel
    launch on the routing hot path. Read-only: callers must not write into it."""
    if compiling():
        return torch.arange(start, stop, device=device)
    key = (start, stop, torch.device(device))
    cached = _ARANGES.get(key)
    if cached is None:
        if len(_ARANGES) > 256:
            _ARANGES.clear()
        cached = _ARANGES[key] = torch.arange(start, stop, device=device)
    return cached


_ARANGES: dict = {}
_MAX_TIE_EXPERTS = 1 << 15  # the tie-breaking key (rank, preference, expert) fits 63 bits up to here


def _round_down(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The largest value of ``dtype`` that is <= each float64 in ``t``."""
    r = t.to(dtype)
    too_big = r.double() > t
    return torch.where(too_big, torch.nextafter(r, torch.full_like(r, -float("inf"))), r)


def _numpy_sortable(p: torch.Tensor) -> bool:
    """Whether :func:`_bh_count_keys` applies: float32 on the CPU fast path (see core._paths), E < 2**31."""
    return host_fast(p) and p.dtype == torch.float32 and p.shape[-1] < 2**31


_BLOCK = 1 << 16  # elements per block of rows: the int64 temporaries stay in cache (512 KiB)


def _bh_count_keys(
    p: torch.Tensor, thresholds: torch.Tensor, width: int, preference: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch branch of :func:`_bh_count`, exactly, by one integer sort (CPU, float32).

    For p >= 0 the float32 bit pattern, read as an integer, orders like the value, so the key
    ``bits(p) * 2**s + e`` (``2**s >= E``) orders by p-value and then by expert index: an
    ascending sort of the keys is the stable sort of the p-values, the low bits give the order
    and ``p_(k) <= t_k`` is ``key_(k) < (bits(t_k) + 1) * 2**s``. numpy sorts int64 rows with
    SIMD, many times faster than ``torch.sort`` on short rows; blocks of rows keep it in cache.

    With a ``preference``, rows whose first ``width + 1`` sorted keys hold equal p-values are
    sorted again by (p, full preference, expert): see :func:`_break_ties`. Where such rows are
    common (conformal p-values share the floor 1/(n+1)), the next blocks put a middle field in
    the key instead, between p (30 bits: p <= 1) and the expert: the top ``33 - s`` bits of the
    preference's descending order key, so one sort orders ties by preference, and only rows
    whose ties agree in that truncated preference too (logits within ~2**-18) are redone.
    """
    n = p.shape[-1]
    lead = p.shape[:-1]
    shift = max(1, (n - 1).bit_length())
    values = p.detach().reshape(-1, n).contiguous().numpy()  # (N, E)
    prefs = None if preference is None else preference.detach().reshape(-1, n).to(torch.float32).numpy()  # (N, E)
    middle = 0  # bits of the preference field in the key: 0 until ties prove common
    experts = np.arange(n, dtype=np.int64)
    k = np.empty(len(values), np.int64)  # (N,)
    order = np.empty((len(values), width), np.int64)  # (N, width)
    step = max(1, _BLOCK // n)
    for start in range(0, len(values), step):
        block = values[start : start + step]
        if block.min() == 0:  # a -0.0 has its sign bit set: equal to +0.0, so clear the sign
            block = np.abs(block)
        low = shift + middle  # the p-value's bits start here
        key = np.left_shift(block.view(np.int32), low, dtype=np.int64)  # (B, E)
        if middle:
            key |= np.left_shift(_orderable_desc(prefs[start : start + step]) >> (32 - middle), shift, dtype=np.int64)
        key |= experts
        key.sort(axis=-1)
        limit = np.left_shift(thresholds.numpy().view(np.int32) + 1, low, dtype=np.int64)  # (E,)
        below = key < limit  # (B, E): p_(k) <= t_k
        # step-up: the largest k whose sorted p-value is under its threshold (0 if none)
        k[start : start + step] = np.where(below.any(axis=-1), n - np.argmax(below[:, ::-1], axis=-1), 0)
        if prefs is not None and n > 1:
            key, redone = _break_ties(key, shift, low, prefs[start : start + step], width)
            if redone > 0.1 * len(key):
                middle = 33 - shift
        np.bitwise_and(key[:, :width], (1 << shift) - 1, out=order[start : start + step])  # expert ids
    return torch.from_numpy(k).reshape(lead), torch.from_numpy(order).reshape(*lead, width)


def _break_ties(
    key: np.ndarray, shift: int, low: int, prefs: np.ndarray, width: int
) -> tuple[np.ndarray, int]:
    """Sorted keys (B, E) whose ties among the first ``width + 1`` are redone, and how many rows were.

    A tie: equal p-value and, if the key has a middle field, equal truncated preference.

    For those rows the new key is ``(rank of the run of equal p-values, full 32-bit preference
    descending, expert)`` packed in 63 bits (rank and expert < 2**s <= 2**15); the low ``s``
    bits remain the expert id. Only the first L = 2 (width + 1) positions are sorted again
    where the run of equal p-values at position ``width`` ends before L (runs after it do not
    reach the first ``width`` positions); the whole row otherwise.
    """
    n = key.shape[1]
    w = min(width, n - 1)
    head = key[:, : w + 1] >> shift  # (B, w + 1): p and truncated preference
    tied = np.flatnonzero((head[:, 1:] == head[:, :-1]).any(axis=1))  # rows to redo
    if tied.size == 0:
        return key, 0
    prefix = min(n, 2 * (w + 1))
    ends = (key[tied, prefix - 1] >> low) != (key[tied, w] >> low)
    short, full = (tied[ends], tied[~ends]) if prefix < n else (tied, tied[:0])
    for rows, length in ((short, prefix), (full, n)):
        if rows.size:
            key[rows, :length] = _tie_keys(key[rows, :length], shift, low, prefs[rows])
    return key, tied.size


def _tie_keys(rows: np.ndarray, shift: int, low: int, prefs: np.ndarray) -> np.ndarray:
    """Sorted keys (b, L) sorted again by (rank of the p-value's run, preference, expert)."""
    pbits = rows >> low
    positions = np.arange(rows.shape[1], dtype=np.int64)
    new_run = np.ones(rows.shape, dtype=bool)
    new_run[:, 1:] = pbits[:, 1:] != pbits[:, :-1]
    rank = np.maximum.accumulate(np.where(new_run, positions, 0), axis=1)  # (b, L): start of the run
    expert = rows & ((1 << shift) - 1)  # (b, L)
    pref = _orderable_desc(np.take_along_axis(prefs, expert, axis=1)).astype(np.int64)  # (b, L) in [0, 2**32)
    out = (rank << (32 + shift)) | (pref << shift) | expert
    out.sort(axis=-1)
    return out


def _orderable_desc(a: np.ndarray) -> np.ndarray:
    """uint32 keys that order like ``-a`` (a float32; -0.0 = +0.0): larger a, smaller key.

    With i the bit pattern: a >= 0 gives ``i ^ 0x7FFFFFFF`` (below 2**31, larger a smaller);
    a < 0 gives ``i`` (sign bit set: above 2**31, more negative larger).
    """
    i = np.add(a, np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
    return (i ^ (~(i >> 31) & np.int32(0x7FFFFFFF))).view(np.uint32)


def bh_select(
    p_values: torch.Tensor,
    alpha: float,
    *,
    min_k: int = 0,
    max_k: int | None = None,
    preference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Benjamini-Hochberg selection along the last dimension.

    Sort the E p-values, :math:`p_{(1)} \\le \\dots \\le p_{(E)}`, and reject the hypotheses with
    the :math:`\\hat k` smallest, :math:`\\hat k = \\max\\{k : p_{(k)} \\le k\\alpha/E\\}`
    (Benjamini & Hochberg 1995, eq. 1). With ``min_k``/``max_k`` the count is clamped to
    ``[min_k, max_k]``, always taking p-values in ascending order; ties are broken by
    ``preference`` (larger first) if given, then by index.

    Parameters
    ----------
    p_values : torch.Tensor, shape (..., E)
        p-values in [0, 1], any float dtype, any device; leading dimensions are batched.
    alpha : float
        FDR level in (0, 1].
    min_k : int, default 0
        Select at least this many.
    max_k : int or None, default None
        Select at most this many (None: E).
    preference : torch.Tensor, shape (..., E), optional
        Tie-breaker among equal p-values where a clamp or the BH cut splits them (for routing:
        the router's logits, so that a tie goes to the expert the router prefers).

    Returns
    -------
    torch.BoolTensor, shape (..., E)
        True where the hypothesis is rejected (the expert is selected).

    Examples
    --------
    >>> import torch
    >>> bh_select(torch.tensor([0.001, 0.02, 0.03, 0.5]), 0.05).tolist()
    [True, True, True, False]
    """
    k, order = bh_count(p_values, alpha, min_k=min_k, max_k=max_k, preference=preference)
    n = p_values.shape[-1]
    positions = torch.arange(n, device=p_values.device)
    take_sorted = positions < k.unsqueeze(-1)  # (..., E) in sorted order
    mask = torch.zeros(p_values.shape, dtype=torch.bool, device=p_values.device)
    return mask.scatter(-1, order, take_sorted)


def bh_adjust(p_values: torch.Tensor) -> torch.Tensor:
    """Benjamini-Hochberg adjusted p-values (q-values) along the last dimension.

    :math:`\\tilde p_{(i)} = \\min_{j \\ge i} \\min(1, E\\, p_{(j)} / j)` (Benjamini & Hochberg 1995;
    statsmodels' ``fdr_bh``), computed so that ``bh_adjust(p) <= alpha`` equals
    ``bh_select(p, alpha)`` exactly, for every float ``alpha`` and every input dtype: each
    :math:`E p_{(j)}/j` is the smallest float64 ``a`` with ``p_(j) <= (j / E) * a`` in float64,
    the very comparison :func:`bh_select` makes. The result is therefore float64 whatever the
    input dtype: rounded to bfloat16 or float16 (8 or 11 significant bits) it would cross
    ``alpha`` on ties of the rounding (e.g. [0.001, 0.02, 0.03, 0.5] in bfloat16 at alpha 0.04).

    Parameters
    ----------
    p_values : torch.Tensor, shape (..., E)

    Returns
    -------
    torch.Tensor, same shape as ``p_values``, float64.
    """
    check_pvalues(p_values)
    n = p_values.shape[-1]
    p = p_values.to(torch.float64)
    sorted_p, order = torch.sort(p, dim=-1, stable=True)  # (..., E)
    factors = torch.arange(1, n + 1, device=p.device, dtype=torch.float64) / n  # (E,) j / E, as bh_count
    scaled = _smallest_alpha(sorted_p, factors)  # (..., E)
    # running minimum from the right: flip, cummin, flip back
    adjusted_sorted = scaled.flip(-1).cummin(dim=-1).values.flip(-1).clamp(max=1.0)
    return torch.empty_like(p).scatter(-1, order, adjusted_sorted)


def _smallest_alpha(p: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """The smallest float64 ``a >= 0`` with ``p <= factor * a`` (float64 product), elementwise.

    ``p / factor`` is within an ulp or two of it, and ``factor * a`` is monotone in ``a``: step
    up while the product is below ``p``, down while the product one float lower still reaches it.
    """
    up = torch.full_like(p, float("inf"))
    down = torch.zeros_like(p)
    a = p / factor
    for _ in range(4):
        a = torch.where(factor * a < p, torch.nextafter(a, up), a)
    for _ in range(4):
        lower = torch.nextafter(a, -up).clamp(min=0.0)
        a = torch.where((factor * lower >= p) & (a > 0), lower, a)
    return torch.maximum(a, down)
