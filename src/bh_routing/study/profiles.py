"""Named run profiles (``--config colab-t4``): settings sized for a machine.

``colab-t4``: the notebook's analyses on OLMoE-1B-7B within about 15 minutes on Colab's free T4.
The forward tokens of a run with it are counted by ``benchmarks/count_forward.py`` (the method and
the T4 time estimate: docs/scaling.md, "Memory and time on small GPUs"); the full run stays the
default.
"""

from __future__ import annotations

PROFILES: dict[str, dict] = {
    "colab-t4": {
        "eval_sequences": 24,  # 24 windows of 256 tokens (the full run: 64)
        "calib_sequences": 48,  # (128)
        "seq_len": 256,
        "alphas": [0.01, 0.05, 0.1, 0.2, 0.4],  # the α sweep (9 values in the full run)
        "temperatures": [0.5, 1.0, 2.0],
        "pvalues": ["empirical", "calibrated", "calibrated-router"],
        "matched_baselines": False,  # BH matched to top-k only (about half the matched step)
        "certify_tokens": 64,
        "certify_grid": "coarse",
        "new_tokens": 16,
    },
}
