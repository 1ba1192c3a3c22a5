"""The ``certify`` step: a Learn-then-Test certificate of every routing family (``bh-routing
certify``, and a step of ``bh-routing run``).

It certifies on the run's calibration windows (from documents disjoint from the evaluation ones)
with the **document** as the unit (each document's mean risk over its windows; windows of one
document are not independent), and applies the certificate to the evaluation sequences (held out:
not used to certify), with the settings ``certify_risk``, ``certify_epsilon``, ``certify_delta``,
``certify_families`` and ``certify_tokens`` of :class:`~bh_routing.study.config.RunConfig`. It
writes ``OUT/certificate.json`` (format in :mod:`bh_routing.analysis.certify`) and returns the
certificate without its per-unit risks. With too few documents for a certificate at ε but enough at
the frontier's largest ε (``STOP_FACTOR`` × ε) it certifies nothing at ε, says why
(``infeasible``) and still draws the frontier; with too few even there (e.g. ``--quick``) it
returns ``{"skipped": <why>}`` and writes nothing.

Cost: one unpatched pass and one patched pass per grid point over the calibration sequences, each
family's grid measured only up to its first point whose mean risk exceeds ``STOP_FACTOR`` × ε
(exact for every ε up to there), then one pass per certified family over the evaluation sequences.
In a run (``certify_grid="coarse"``, ``certify_tokens=64``) the variable-k grids have every other
point and each window is cut to its first 64 tokens, so the
step stays about ten seconds of CPU on the embedded model; ``bh-routing certify`` uses the fine
grids and whole sequences.
"""

from __future__ import annotations

from ...analysis import certify as C
from ..registry import Context, Step, register_step

# measure each family's grid up to mean risk STOP_FACTOR × ε (certificates exact up to there)
STOP_FACTOR = {"coarse": 2.0, "fine": 3.0}


def _certify(ctx: Context):
    cfg = ctx.cfg
    fams = tuple(cfg.certify_families)
    calib, held = ctx.inputs.calib_seqs, ctx.inputs.eval_seqs
    split = ctx.inputs.split
    # the unit is the document: windows of one document are not independent (a text without
    # document boundaries has windows as its units)
    groups = split.calibration.documents if split is not None and split.unit == "document" else None
    n_units = len(set(groups)) if groups is not None else int(calib.shape[0])
    top = 1.0 if cfg.certify_risk == "top1" else C.LOSS_BOUND
    cap = min(top, STOP_FACTOR[cfg.certify_grid] * cfg.certify_epsilon)
    need = C.needed_units(risk=cfg.certify_risk, epsilon=cap, delta=cfg.certify_delta, num_families=len(fams))
    if n_units < need:  # nothing certifiable at any ε up to the frontier's cap: skip the passes
        return {"skipped": f"too few calibration {'documents' if groups is not None else 'sequences'} to certify at "
                           f"any ε up to {cap:g}: got {n_units}, need at least {need} (δ = {cfg.certify_delta:g} over "
                           f"{len(fams)} families)"}
    tokens = cfg.certify_tokens or cfg.seq_len
    cert = C.certify(
        ctx.model, calib[:, :tokens], risk=cfg.certify_risk, epsilon=cfg.certify_epsilon, delta=cfg.certify_delta,
        families=fams, groups=groups, min_k=cfg.min_k, max_k=cfg.max_k, stop_above=(cfg.certify_risk, cap),
        coarse=cfg.certify_grid == "coarse", seed=cfg.seed,
        model_name=ctx.inputs.model_name, progress=True, infeasible_ok=True,
    )
    if split is not None:
        cert["calibration_documents"] = split.calibration.num_documents
    cert["held_out"] = C.held_out_check(ctx.model, held[:, :tokens], cert)
    eps = C.frontier_epsilons(cap, risk=cert["risk"], delta=cert["delta"], n=cert["n_units"],
                              num_families=len(cert["families"]))
    cert["frontier"] = C.certified_frontier(cert["per_sequence"], C.grid_points(cert), risk=cert["risk"],
                                            delta=cert["delta"], epsilons=eps)
    C.save_certificate(cert, ctx.out / C.CERTIFICATE_JSON)
    return {k: v for k, v in cert.items() if k != "per_sequence"}


register_step(Step("certify", _certify, groups=("run", "certify"), files=(C.CERTIFICATE_JSON,)))
