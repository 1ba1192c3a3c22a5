"""Shared-text detection between the held-out documents and the embedded model's training text.

A *passage* is a string of ``K`` = 100 characters holding at least ``MIN_ALNUM`` = 25 letters or
digits (runs of spaces, table borders and rules of ``=`` or ``-`` are not passages). Two texts
*share text* when some passage occurs in both. Each passage is reduced to a 64-bit hash: a
polynomial hash over Unicode code points modulo 2**64, then the splitmix64 finaliser.

``scripts/prepare_corpus.py`` checks every added document against the hashes of **every** passage
of the training text (exact up to 64-bit collisions). The repository cannot ship the training text,
so it ships a *winnowed* sample of those hashes (Schleimer, Wilkerson & Aiken 2003, "Winnowing:
local algorithms for document fingerprinting", SIGMOD): the smallest hash of every ``W`` = 200
consecutive passages. A passage is in the sample only if it is in the training text, and any shared
stretch of at least ``K + W - 1`` = 299 characters whose every ``K``-character window is a passage
contains a sampled passage, so a test can check the shipped documents without the training text.
"""

from __future__ import annotations

import numpy as np

K = 100  # characters per passage
MIN_ALNUM = 25  # letters/digits a passage needs
W = 200  # passages per winnowing window (guarantee: shared stretches of K + W - 1 characters)

_B = np.uint64(0x100000001B3)  # odd: invertible modulo 2**64
_B_INV = np.uint64(pow(int(_B), -1, 2**64))


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)  # (n,)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (a bijection on uint64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def passage_hashes(text: str) -> np.ndarray:
    """Hash of every passage of ``text`` in position order (uint64, length <= len(text) - K + 1).

    Windows with fewer than ``MIN_ALNUM`` letters or digits are left out.
    """
    c = _codes(text)  # (n,)
    n = len(c)
    if n < K:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        inv_pow = np.cumprod(np.full(n, _B_INV, dtype=np.uint64)) * _B  # Binv**j, j = 0..n-1
        pow_ = np.cumprod(np.full(n, _B, dtype=np.uint64)) * _B_INV  # B**j
        q = np.concatenate([[np.uint64(0)], np.cumsum(c * inv_pow, dtype=np.uint64)])  # (n + 1,)
        h = (q[K:] - q[: n - K + 1]) * pow_[K - 1 :]  # sum_j c[i+j] * B**(K-1-j), (n - K + 1,)
    alnum = ((c >= 48) & (c <= 57)) | ((c >= 65) & (c <= 90)) | ((c >= 97) & (c <= 122)) | (c > 127)
    a = np.concatenate([[0], np.cumsum(alnum)])
    keep = (a[K:] - a[: n - K + 1]) >= MIN_ALNUM
    return _mix(h)[keep]


def winnow(hashes: np.ndarray, w: int = W) -> np.ndarray:
    """Sorted unique minima of every ``w`` consecutive hashes (all of them when fewer than ``w``)."""
    if len(hashes) == 0:
        return hashes
    if len(hashes) <= w:
        return np.unique(hashes.min(keepdims=True))
    mins = np.lib.stride_tricks.sliding_window_view(hashes, w).min(axis=1)
    return np.unique(mins)


def shared_passages(text: str, reference: np.ndarray) -> int:
    """How many passages of ``text`` have their hash in the sorted array ``reference``."""
    h = passage_hashes(text)
    if len(h) == 0 or len(reference) == 0:
        return 0
    i = np.searchsorted(reference, h).clip(max=len(reference) - 1)
    return int((reference[i] == h).sum())
