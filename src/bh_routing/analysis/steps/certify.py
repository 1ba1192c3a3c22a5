"""The ``certify`` step: a Learn-then-Test certificate of every routing family (``bh-routing
certify``, and a step of ``bh-routing run``).

It certifies on the run's calibration sequences (disjoint from the evaluation ones) and applies the
certificate to the evaluation sequences (held out: not used to certify), with the settings
``certify_risk``, ``certify_epsilon``, ``certify_delta``, ``certify_families`` and
``certify_tokens`` of :class:`~bh_routing.analysis.config.RunConfig`. It writes
``OUT/certificate.json`` (format in :mod:`bh_routing.analysis.certify`) and returns the
certificate without its per-sequence risks. With too few calibration sequences for any certificate
(e.g. ``--quick``) it returns ``{"skipped": <why>}`` and writes nothing.

Cost: one unpatched pass and one patched pass per grid point over the calibration sequences, each
family's grid measured only up to its first point whose mean risk exceeds ``STOP_FACTOR`` × ε
(exact for every ε up to there), then one pass per certified family over the evaluation sequences.
In a run (``certify_grid="coarse"``, ``certify_tokens=64``) the variable-k grids have every other
point and each sequence is cut to its first 64 tokens (the certified unit is that window), so the
step stays about ten seconds of CPU on the embedded model; ``bh-routing certify`` uses the fine
grids and whole sequences.
"""

from __future__ import annotations

from .. import certify as C
from ..registry import Context, Step, Summary, register_step, register_summary

# measure each family's grid up to mean risk STOP_FACTOR × ε (certificates exact up to there)
STOP_FACTOR = {"coarse": 1.5, "fine": 3.0}


def _certify(ctx: Context):
    cfg = ctx.cfg
    fams = tuple(cfg.certify_families)
    calib, held = ctx.inputs.calib_seqs, ctx.inputs.eval_seqs
    try:
        C.check_enough_units(int(calib.shape[0]), risk=cfg.certify_risk, epsilon=cfg.certify_epsilon,
                             delta=cfg.certify_delta, num_families=len(fams))
    except C.CertificateError as exc:
        return {"skipped": str(exc)}
    tokens = cfg.certify_tokens or cfg.seq_len
    top = 1.0 if cfg.certify_risk == "top1" else C.LOSS_BOUND
    cap = min(top, STOP_FACTOR[cfg.certify_grid] * cfg.certify_epsilon)
    cert = C.certify(
        ctx.model, calib[:, :tokens], risk=cfg.certify_risk, epsilon=cfg.certify_epsilon, delta=cfg.certify_delta,
        families=fams, min_k=cfg.min_k, max_k=cfg.max_k, stop_above=(cfg.certify_risk, cap),
        coarse=cfg.certify_grid == "coarse", seed=cfg.seed,
        model_name=ctx.inputs.model_name, progress=True,
    )
    split = ctx.inputs.split
    if split is not None:  # the windows' documents: windows of one document are not independent units
        cert["calibration_documents"] = split.calibration.num_documents
    cert["held_out"] = C.held_out_check(ctx.model, held[:, :tokens], cert)
    eps = C.frontier_epsilons(cap, risk=cert["risk"], delta=cert["delta"], n=cert["n_units"],
                              num_families=len(cert["families"]))
    cert["frontier"] = C.certified_frontier(cert["per_sequence"], C.grid_points(cert), risk=cert["risk"],
                                            delta=cert["delta"], epsilons=eps)
    C.save_certificate(cert, ctx.out / C.CERTIFICATE_JSON)
    return {k: v for k, v in cert.items() if k != "per_sequence"}


register_step(Step("certify", _certify, groups=("run", "certify"), files=(C.CERTIFICATE_JSON,)))


def _certified(steps: dict, inputs) -> dict:
    """derived["certified"]: per family the certified experts per token (None: none certified),
    and the cheapest family; absent when the step was skipped (the figure needs it)."""
    cert = steps["certify"]
    if "skipped" in cert:
        return {}
    per_family = {f: (None if (p := C.chosen_point(cert, f)) is None else p["mean_k"]) for f in cert["families"]}
    return {"certified": {"epsilon": cert["epsilon"], "delta": cert["delta"], "risk": cert["risk"],
                          "mean_k": per_family, "best_family": cert["best_family"]}}


register_summary(Summary("certify", _certified, needs=("certify",)))
