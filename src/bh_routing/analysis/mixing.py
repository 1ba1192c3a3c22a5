"""The baseline mixed to a rule's *evaluation* mean k: a sensitivity check of every matched comparison.

A matched comparison (:mod:`~bh_routing.analysis.matching`) fixes the rule's setting on calibration
text, so on the evaluation documents the rule's mean k differs from its target by sampling (and that
difference is one shared draw for all targets: issue #26 found BH above its target at every matched
target of the shipped run). Extra experts favour the rule. This module builds,
from runs that already exist (no forward pass), the **randomised baseline whose expected mean k on
the evaluation documents equals the rule's evaluation mean k** :math:`k_e`:

- take the two settings of the baseline's family whose evaluation mean k bracket :math:`k_e`
  (top-k: k = floor(k_e) and ceil(k_e); top-p, the weight ratio, BH: the two adjacent runs of its grid
  or α sweep), :math:`k_{lo} \\le k_e \\le k_{hi}`;
- route each document with the higher setting with probability
  :math:`f = (k_e - k_{lo}) / (k_{hi} - k_{lo})` and with the lower one otherwise. Its expected mean k
  is :math:`(1 - f) k_{lo} + f k_{hi} = k_e` exactly;
- use the **exact expectation per document** of that randomised rule, not one random draw: document
  d's loss is :math:`(1 - f)\\,\\ell_{lo}(d) + f\\,\\ell_{hi}(d)` (and its mean k likewise). Mixing per
  token instead of per document gives the same per-document expected loss. The paired t-test over
  documents then compares the rule with the randomised baseline's expected loss on each document
  (conditional on the documents; the coin's own variance is not added).

A :math:`k_e` outside the range the family's runs reach on the evaluation documents gets no
comparison (*outside*, with the range). Choosing f uses the evaluation documents' mean k: this is a
reported sensitivity comparison, never a choice that feeds another result.
"""

from __future__ import annotations

import numpy as np


def family_runs(pool: list[dict], family: str) -> list[dict]:
    """The runs of ``family`` in ``pool`` that have a knob value and per-sequence losses, by mean k."""
    runs = [r for r in pool if r.get("family") == family and r.get("param") is not None and r.get("seq_nll")]
    return sorted(runs, key=lambda r: r["mean_k"])


def bracket(runs: list[dict], k: float) -> tuple[dict, dict, float] | str:
    """(lo, hi, f) with lo's mean k <= k <= hi's and f the share of hi that mixes them to k; or the
    reason there is none (a sentence starting "outside")."""
    if not runs:
        return "outside: no runs of the baseline's family on the evaluation documents"
    ks = [r["mean_k"] for r in runs]
    if not min(ks) <= k <= max(ks):
        return (f"outside: the baseline's family reaches mean k {min(ks):.3f} to {max(ks):.3f} on the evaluation "
                f"documents, the rule used {k:.3f}")
    lo = max((r for r in runs if r["mean_k"] <= k), key=lambda r: r["mean_k"])
    hi = min((r for r in runs if r["mean_k"] >= k), key=lambda r: r["mean_k"])
    if hi["mean_k"] == lo["mean_k"]:
        return lo, lo, 0.0
    return lo, hi, (k - lo["mean_k"]) / (hi["mean_k"] - lo["mean_k"])


def mixed_run(lo: dict, hi: dict, f: float) -> dict:
    """The per-document expectation of routing a share ``f`` of the documents with ``hi`` and the rest
    with ``lo``, as a run dict (``seq_nll`` and ``seq_mean_k`` the per-window expectations, which
    :func:`~bh_routing.analysis.evaluate.document_loss` turns into per-document expected losses)."""
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"f must be in [0, 1], got {f}")
    if list(lo["seq_tokens"]) != list(hi["seq_tokens"]):
        raise ValueError(f"{lo['label']} and {hi['label']} were not run on the same windows")
    nll = (1 - f) * np.asarray(lo["seq_nll"], float) + f * np.asarray(hi["seq_nll"], float)
    seq_k = (1 - f) * np.asarray(lo["seq_mean_k"], float) + f * np.asarray(hi["seq_mean_k"], float)
    label = lo["label"] if lo is hi or f == 0.0 else f"{lo['label']}|{hi['label']} mixed (f={f:.3f})"
    return {"label": label, "family": lo["family"], "param": None, "mean_k": (1 - f) * lo["mean_k"] + f * hi["mean_k"],
            "seq_nll": nll.tolist(), "seq_tokens": list(lo["seq_tokens"]), "seq_mean_k": seq_k.tolist()}


def mixed_to(pool: list[dict], family: str, k: float) -> tuple[dict | None, dict]:
    """The baseline of ``family`` mixed to mean k ``k`` on the evaluation documents: ``(run, info)``,
    run None (and ``info["reason"]``) when ``k`` is outside the family's evaluated range."""
    b = bracket(family_runs(pool, family), k)
    if isinstance(b, str):
        return None, {"reason": b}
    lo, hi, f = b
    return mixed_run(lo, hi, f), {"lo": lo["label"], "hi": hi["label"], "lo_k": lo["mean_k"], "hi_k": hi["mean_k"],
                                  "fraction_hi": f, "mean_k": k}
