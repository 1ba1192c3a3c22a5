"""What the matched step's calibration windows cost and buy (issue #26; numbers in
``bh_routing.analysis.matching``'s docstring).

On the embedded model and the default split: BH calibrated-router at α = 0.05 over all calibration
windows (the sd of the per-window mean k, hence the standard error of the calibration mean k on the
first M windows), then the α search of the 6 top-k targets k = 2..7 on the first M windows, for each
M given (time, patch passes, targets met within the tolerance).

    python scripts/match_windows_cost.py 16 32 128
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bh_routing.analysis import matching
from bh_routing.analysis.evaluate import evaluate_strategy
from bh_routing.analysis.experiments import fit_calibration
from bh_routing.study import RunConfig
from bh_routing.study.inputs import prepare

VARIANT = "calibrated-router"


def main() -> None:
    windows = [int(a) for a in sys.argv[1:]] or [16, 32, 128]
    torch.set_num_threads(1)
    cfg = RunConfig(bh_pvalues=VARIANT).validate().effective()
    inputs = prepare(cfg, Path("runs/match_windows_cost"))
    calib = inputs.calib_seqs
    print(f"calibration windows {tuple(calib.shape)}, documents {len(set(inputs.split.calibration.documents))}")
    cal = fit_calibration(inputs.model, calib, routing=inputs.routing, null=cfg.null, reservoir_size=cfg.reservoir_size,
                          seed=cfg.seed, model_name=inputs.model_name)
    rs = cfg.routing(VARIANT)
    started = time.time()
    run = evaluate_strategy(inputs.model, calib, rs.bh(VARIANT, cal, alpha=cfg.alpha), label="bh", family="bh", param=cfg.alpha)
    k = np.array(run.seq_mean_k)
    print(f"one patch pass over {len(calib)} windows: {time.time() - started:.1f} s; mean k {k.mean():.3f}, "
          f"sd over windows {k.std(ddof=1):.3f}")
    for m in (16, 32, 64, len(k)):
        print(f"  M = {m}: standard error of the mean k {k.std(ddof=1) / math.sqrt(m):.4f}")
    for m in windows:
        started = time.time()
        search = matching.AlphaSearch(inputs.model, calib[:m], lambda a: rs.bh(VARIANT, cal, alpha=a),
                                      model_top_k=inputs.routing.top_k)
        found = [search.find(float(t)) for t in range(2, 8)]
        print(f"M = {m}: search of 6 top-k targets {time.time() - started:.1f} s, {search.passes} passes, "
              f"{sum(f.matched for f in found)} met: "
              + ", ".join(f"{f.target_k:g}: {f.calibration_k and round(f.calibration_k, 3)}" for f in found))


if __name__ == "__main__":
    main()
