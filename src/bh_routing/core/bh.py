"""The Benjamini-Hochberg step-up procedure, batched over leading dimensions."""

from __future__ import annotations

import numpy as np
import torch

from ._validate import check_alpha, check_k_bounds, check_pvalues


def _work_dtype(p: torch.Tensor) -> torch.dtype:
    # half precision cannot resolve k * alpha / E near the boundary: compare in float32 at least
    return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32


def bh_count(
    p_values: torch.Tensor, alpha: float, *, min_k: int = 0, max_k: int | None = None
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

    Returns
    -------
    k : torch.LongTensor, shape (...)
        ``clamp(max{k : p_(k) <= k alpha / E}, min_k, max_k)`` (0 when no k qualifies).
    order : torch.LongTensor, shape (..., E)
        Expert indices sorted by ascending p-value, ties broken by expert index.
    """
    check_pvalues(p_values)
    alpha = check_alpha(alpha)
    check_k_bounds(min_k, max_k, p_values.shape[-1])
    return _bh_count(p_values, alpha, min_k, max_k)


def _bh_count(
    p_values: torch.Tensor, alpha: float, min_k: int, max_k: int | None, *, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """bh_count without validation, for callers that produced valid p-values themselves.

    ``width``: return only the first ``width`` columns of the order (the strategies' padded width).
    """
    n = p_values.shape[-1]
    p = p_values.to(_work_dtype(p_values))
    ranks = torch.arange(1, n + 1, device=p.device, dtype=torch.float64)  # (E,)
    # same arithmetic as statsmodels' fdr_bh, in float64 whatever the p-values' dtype:
    # threshold_k = (k / E) * alpha. A float32 p-value is <= t exactly when it is <= the largest
    # float32 not above t, so the comparison in the p-values' dtype uses that rounding.
    thresholds = _round_down((ranks / n) * alpha, p.dtype)  # (E,)
    if _numpy_sortable(p):
        k, order = _bh_count_keys(p, thresholds, n if width is None else width)
    else:
        sorted_p, order = torch.sort(p, dim=-1, stable=True)  # (..., E)
        below = sorted_p <= thresholds  # (..., E)
        # step-up: the largest k whose sorted p-value is under its threshold (0 if none)
        k = (below * torch.arange(1, n + 1, device=p.device)).amax(dim=-1)  # (...)
        if width is not None:
            order = order[..., :width]
    k = k.clamp(min=min_k, max=n if max_k is None else max_k)
    return k, order


def _round_down(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The largest value of ``dtype`` that is <= each float64 in ``t``."""
    r = t.to(dtype)
    too_big = r.double() > t
    return torch.where(too_big, torch.nextafter(r, torch.full_like(r, -float("inf"))), r)


def _numpy_sortable(p: torch.Tensor) -> bool:
    """Whether :func:`_bh_count_keys` applies: float32 on the CPU, no autograd, E < 2**31."""
    return p.device.type == "cpu" and p.dtype == torch.float32 and not p.requires_grad and p.shape[-1] < 2**31


_BLOCK = 1 << 16  # elements per block of rows: the int64 temporaries stay in cache (512 KiB)


def _bh_count_keys(p: torch.Tensor, thresholds: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch branch of :func:`_bh_count`, exactly, by one integer sort (CPU, float32).

    For p >= 0 the float32 bit pattern, read as an integer, orders like the value, so the key
    ``bits(p) * 2**s + e`` (``2**s >= E``) orders by p-value and then by expert index: an
    ascending sort of the keys is the stable sort of the p-values, the low bits give the order
    and ``p_(k) <= t_k`` is ``key_(k) < (bits(t_k) + 1) * 2**s``. numpy sorts int64 rows with
    SIMD, many times faster than ``torch.sort`` on short rows; blocks of rows keep it in cache.
    """
    n = p.shape[-1]
    lead = p.shape[:-1]
    shift = max(1, (n - 1).bit_length())
    values = p.detach().reshape(-1, n).contiguous().numpy()  # (N, E)
    experts = np.arange(n, dtype=np.int64)
    limit = np.left_shift(thresholds.numpy().view(np.int32) + 1, shift, dtype=np.int64)  # (E,)
    k = np.empty(len(values), np.int64)  # (N,)
    order = np.empty((len(values), width), np.int64)  # (N, width)
    step = max(1, _BLOCK // n)
    for start in range(0, len(values), step):
        block = values[start : start + step]
        key = np.left_shift(block.view(np.int32), shift, dtype=np.int64)  # (B, E)
        key |= experts
        key.sort(axis=-1)
        if key[:, 0].min() < 0:  # a -0.0 (sign bit set): equal to +0.0, so clear the sign
            key = np.left_shift(np.abs(block).view(np.int32), shift, dtype=np.int64)
            key |= experts
            key.sort(axis=-1)
        below = key < limit  # (B, E): p_(k) <= t_k
        # step-up: the largest k whose sorted p-value is under its threshold (0 if none)
        k[start : start + step] = np.where(below.any(axis=-1), n - np.argmax(below[:, ::-1], axis=-1), 0)
        np.bitwise_and(key[:, :width], (1 << shift) - 1, out=order[start : start + step])  # expert ids
    return torch.from_numpy(k).reshape(lead), torch.from_numpy(order).reshape(*lead, width)


def bh_select(
    p_values: torch.Tensor, alpha: float, *, min_k: int = 0, max_k: int | None = None
) -> torch.Tensor:
    """Benjamini-Hochberg selection along the last dimension.

    Sort the E p-values, :math:`p_{(1)} \\le \\dots \\le p_{(E)}`, and reject the hypotheses with
    the :math:`\\hat k` smallest, :math:`\\hat k = \\max\\{k : p_{(k)} \\le k\\alpha/E\\}`
    (Benjamini & Hochberg 1995, eq. 1). With ``min_k``/``max_k`` the count is clamped to
    ``[min_k, max_k]``, always taking p-values in ascending order, ties broken by index.

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
    k, order = bh_count(p_values, alpha, min_k=min_k, max_k=max_k)
    n = p_values.shape[-1]
    positions = torch.arange(n, device=p_values.device)
    take_sorted = positions < k.unsqueeze(-1)  # (..., E) in sorted order
    mask = torch.zeros(p_values.shape, dtype=torch.bool, device=p_values.device)
    return mask.scatter(-1, order, take_sorted)


def bh_adjust(p_values: torch.Tensor) -> torch.Tensor:
    """Benjamini-Hochberg adjusted p-values (q-values) along the last dimension.

    :math:`\\tilde p_{(i)} = \\min_{j \\ge i} \\min(1, E\\, p_{(j)} / j)`, so that
    ``bh_adjust(p) <= alpha`` equals ``bh_select(p, alpha)``.

    Parameters
    ----------
    p_values : torch.Tensor, shape (..., E)

    Returns
    -------
    torch.Tensor, same shape and dtype as ``p_values``.
    """
    check_pvalues(p_values)
    n = p_values.shape[-1]
    p = p_values.to(_work_dtype(p_values))
    sorted_p, order = torch.sort(p, dim=-1, stable=True)  # (..., E)
    ranks = torch.arange(1, n + 1, device=p.device, dtype=p.dtype)
    scaled = sorted_p * n / ranks  # (..., E)
    # running minimum from the right: flip, cummin, flip back
    adjusted_sorted = scaled.flip(-1).cummin(dim=-1).values.flip(-1).clamp(max=1.0)
    adjusted = torch.empty_like(p).scatter(-1, order, adjusted_sorted)
    return adjusted.to(p_values.dtype)
