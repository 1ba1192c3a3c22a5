"""Row loops of BH's router-selection count on the CPU fast path, compiled by numba.

Each token's count is a short loop over its E logits; numpy and torch would make a (T, E) pass
over memory for every step of it (deviations, z-scores, one comparison per threshold), numba
runs all of it while the row is in registers. Same arithmetic, same floats as the static torch
path (:func:`bh_routing.core.router_count.count_by_buckets` on the p-values); the tests compare
both with statsmodels. Compiled on first use (``cache=True``: once per machine, then loaded).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _llvmlite_lib_with_a_dict() -> None:
    """Give llvmlite's library object a real (empty) ``__dict__``, so that vLLM can start after numba loaded.

    ``llvmlite.binding.ffi.lib`` has ``__slots__`` and answers any missing attribute, ``__dict__``
    included, with a wrapped C function. vLLM 0.32's Triton dispatcher scans every module's attributes
    at engine start with ``vars(value).get("kernel")`` and dies on it (``'_lib_fn_wrapper' object has
    no attribute 'get'``). That happens whenever numba was imported first in the process, e.g. a
    transformers run routed on the CPU and then a vLLM engine. The same object, as an instance of a
    subclass without ``__slots__`` (so with an empty ``__dict__``), shares its library handle,
    function table and lock. Every caller reads ``ffi.lib`` at call time, so all of them get the new
    object. Nothing is done if llvmlite's layout is not the one expected.
    """
    try:
        from llvmlite.binding import ffi

        old, base = ffi.lib, ffi._lib_wrapper
    except (ImportError, AttributeError):  # pragma: no cover - another llvmlite
        return
    if type(old) is not base or not set(base.__slots__) <= {"_lib_handle", "_fntab", "_lock"}:
        return
    new = type("_lib_wrapper_with_dict", (base,), {})  # no __slots__: instances get a __dict__
    lib = object.__new__(new)
    for name in base.__slots__:
        object.__setattr__(lib, name, getattr(old, name))
    ffi.lib = lib


@lru_cache(maxsize=None)
def kernels():
    """``(rank_consistent, calibrated, padded)``, compiled on first use (importing numba costs ~0.3 s)."""
    from numba import njit

    _llvmlite_lib_with_a_dict()

    @njit(cache=True, nogil=True)
    def rank_consistent(s, cutoffs, strict, mad_to_sd, j0, max_k, out):  # pragma: no cover - compiled
        # s: (T, E) each row ascending; cutoffs: (E,) indexed by sorted position (position i is rank E - i).
        # not strict: the rank meets its threshold when neg <= cutoffs[i] (normal cutoffs of the
        # empirical null); strict: when float32(-neg) > cutoffs[i] (conformal score thresholds).
        t_rows, n = s.shape
        m = (n - 1) // 2
        for t in range(t_rows):
            c = s[t, m]  # the lower median
            # the MAD, the m-th smallest |c - s_i|: the least over windows of m + 1 consecutive
            # sorted logits of the larger deviation at the window's two ends
            mad = max(abs(c - s[t, 0]), abs(c - s[t, m]))
            for i in range(1, n - m):
                mad = min(mad, max(abs(c - s[t, i]), abs(c - s[t, i + m])))
            scale = mad_to_sd * mad
            k = 0
            for i in range(j0, n):  # the first position that meets is the largest rank
                neg = (c - s[t, i]) / scale if scale > 0 else c - c
                if strict:
                    ok = np.float32(-neg) > cutoffs[i]
                else:
                    ok = neg <= cutoffs[i]
                if ok:
                    k = n - i
                    break
            out[t] = k if k < max_k else max_k

    @njit(cache=True, nogil=True)
    def calibrated(z, columns, max_k, out):  # pragma: no cover - compiled
        # z: (T, E) float32; columns: (E, E), p_e <= t_k iff z_e > columns[k - 1, e] (non-increasing in k,
        # so C(k) = #{e : z_e > columns[k - 1, e]} is non-decreasing and C(k) >= k needs k <= C(E))
        t_rows, n = z.shape
        for t in range(t_rows):
            row = z[t]
            found = 0
            for e in range(n):
                found += row[e] > columns[n - 1, e]
            k = 0
            for j in range(found):  # k = j + 1
                c = 0
                for e in range(n):  # one vectorised count per threshold column
                    c += row[e] > columns[j, e]
                if c >= j + 1:
                    k = j + 1
                    if k >= max_k:  # clamped: the count is at least max_k
                        break
            out[t] = k if k < max_k else max_k

    @njit(cache=True, nogil=True)
    def padded(order, probs, counts, width, indices, weights):  # pragma: no cover - compiled
        # the first counts[t] experts of order[t] with their probabilities; sentinel E and weight 0 after
        t_rows, n = probs.shape
        for t in range(t_rows):
            for j in range(width):
                e = order[t, j]
                if e < 0 or e >= n:  # as gather would: an expert id outside [0, E) is an error, never a read
                    raise IndexError("a strategy's expert order holds an id outside [0, num_experts)")
                if j < counts[t]:
                    indices[t, j] = e
                    weights[t, j] = probs[t, e]
                else:
                    indices[t, j] = n
                    weights[t, j] = 0.0

    return rank_consistent, calibrated, padded


def count_sorted_rows(s: np.ndarray, cutoffs: np.ndarray, *, strict: bool, mad_to_sd, j0: int, max_k: int) -> np.ndarray:
    """BH count (T,) from ascending rows ``s`` (T, E); see :func:`kernels`."""
    out = np.empty(s.shape[0], np.int64)
    kernels()[0](s, cutoffs, strict, mad_to_sd, j0, max_k, out)
    return out


def count_calibrated_rows(z: np.ndarray, columns: np.ndarray, max_k: int) -> np.ndarray:
    """BH count (T,) of per-expert conformal p-values from threshold columns (E, E); see :func:`kernels`."""
    out = np.empty(z.shape[0], np.int64)
    kernels()[1](z, columns, max_k, out)
    return out


def padded_rows(order: np.ndarray, probs: np.ndarray, counts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, weights)`` (T, width): the first ``counts[t]`` of ``order[t]`` with their
    probabilities, then the sentinel E at weight 0 (:func:`bh_routing.core.strategies.base._finish`)."""
    t = probs.shape[0]
    indices, weights = np.empty((t, width), np.int64), np.empty((t, width), probs.dtype)
    kernels()[2](order, probs, counts, width, indices, weights)
    return indices, weights
