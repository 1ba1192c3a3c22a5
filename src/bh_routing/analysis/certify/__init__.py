"""Certified routing: the cheapest setting of each strategy family with a guarantee on quality.

For a strategy family with a grid of settings ordered from the safest to the cheapest (BH α large
→ small, top-k k from the model's k down, top-p p large → small, weight-ratio β small → large),
:func:`certify` measures a bounded risk per calibration sequence at every grid point and certifies,
with Learn-then-Test (:mod:`bh_routing.core.risk_control`: Hoeffding-Bentkus p-values,
fixed-sequence testing within a family, Bonferroni δ/F across the F families), the settings whose
risk on new sequences from the same distribution is at most ε:

.. math:: P\\big(\\text{every certified setting } \\lambda \\text{ has } R(\\lambda) \\le \\varepsilon\\big) \\ge 1 - \\delta

where the probability is over the calibration sample. Because all families hold together, the
cheapest certified setting of each family *and* the cheapest family overall keep the guarantee.

Risks (per sequence, so each is bounded and sequences are the exchangeable unit; never tokens):

``"top1"``
    Top-1 disagreement: the share of the sequence's S − 1 next-token positions whose greedy
    (argmax) token under the routed model differs from the unpatched model's. In [0, 1].
``"loss"``
    Loss increase: the sequence's mean next-token NLL under the routed model minus the unpatched
    model's, in nats/token, clipped to [0, B] with ``B = LOSS_BOUND = 1`` nat/token. Why B = 1: a
    sequence whose loss rises by a whole nat per token (perplexity × e) is broken, and any level a
    user would certify is far below it, so the clip changes the risk only on broken sequences; and
    B = 1 keeps ε in nats in the same (0, 1] range as the top-1 risk. The certified quantity is
    the clipped mean, :math:`E[\\min(\\max(\\Delta, 0), B)]`: the lower clip only raises it
    (conservative), the upper clip lowers it, so every grid point reports how often each clip
    binds (``clip_high``, ``clip_low``).

Cost: one unpatched forward pass over the calibration sequences (greedy tokens and NLL per token,
kept) and one patched pass per grid point; both risks come out of the same passes, so a
certificate can be recomputed for any risk, ε and δ from the saved per-sequence risks
(:func:`recertify`, the notebook's sliders) without running the model.

Validity conditions. The calibration units must be exchangeable with the units the certificate is
applied to: sequences drawn from the same distribution of text (use ``groups`` when several
sequences come from one document, so that documents are the unit). A BH family whose calibrated
null was fitted on the certifying sequences depends on them; only pass a ``calibration`` fitted on
other text.

certificate.json (``format: "bh-routing-certificate"``, ``format_version: "1"``)
------------------------------------------------------------------------------
Read it with :func:`load_certificate`; :func:`certified_strategy` turns it into a ``Strategy``.

``model``: ``{"name", "fingerprint", "num_layers", "num_experts", "top_k"}`` (the fingerprint is
:func:`bh_routing.models.model_fingerprint`; :func:`certified_strategy` refuses any other model).
``risk`` (``"top1"`` | ``"loss"``), ``epsilon``, ``delta``, ``delta_per_family`` (δ/F),
``loss_bound`` (B), ``pvalue`` (``"hoeffding-bentkus"``), ``fwer`` (a sentence), ``unit``
(``"sequence"`` | ``"document"``), ``n_units`` (units certified on), ``min_units`` (fewest units
any certificate at ε, δ/F needs), ``n_sequences``, ``seq_len`` (tokens per sequence certified on),
``grid`` (``"fine"`` | ``"coarse"``), ``stop_above`` (``{"risk", "value"}`` or null: each family
measured up to its first point with mean risk above ``value``), ``seed``, ``versions``.
``families``: ``{family: {"chosen": index or null, "num_certified": J, "grid": [point, ...]}}``
with each point ``{"label", "family", "param", "strategy" (Strategy.describe(), what
:func:`strategy_from_description` rebuilds), "measured", "mean_k", "compute_fraction",
"risk_mean", "p_value", "upper_bound", "certified", "clip_high", "clip_low"}`` in test order
(null numbers for points not measured). ``best_family``: the family whose chosen setting has the
least mean k (null if nothing is certified). ``per_sequence``: ``{"top1": [[...] or null per grid
point], "loss_delta": [[...] or null] (unclipped nats/token), "groups": [...] or null}`` in the
order of :func:`grid_points` (all families' grids concatenated in ``families`` order). Written by
runs and ``bh-routing certify`` also: ``held_out`` (:func:`held_out_check` on the evaluation
sequences) and ``frontier`` (:func:`certified_frontier`).
"""


from ...models.certificate import (
    CertificateError,
    CERTIFICATE_JSON, FORMAT, FORMAT_VERSION, certified_strategy, check_fingerprint, chosen_point, grid_points,
    load_certificate, model_meta, save_certificate, strategy_from_description,
)
from .checks import held_out_check, split_experiment
from .grid import (
    ALPHA_GRID, DEFAULT_DELTA, DEFAULT_EPSILON, DEFAULT_RISK, FAMILIES, LOSS_BOUND, RATIO_GRID, RISKS, TOPP_GRID,
    GridPoint, check_certify_args, check_enough_units, check_families, check_request,
    default_grid, needed_units,
)
from .procedure import FRONTIER_POINTS, certified_frontier, certified_rows, certify, frontier_epsilons, recertify
from .risks import RiskTable, measure_risks

__all__ = [
    "ALPHA_GRID", "CERTIFICATE_JSON", "DEFAULT_DELTA", "DEFAULT_EPSILON", "DEFAULT_RISK", "FAMILIES", "FORMAT",
    "FORMAT_VERSION", "FRONTIER_POINTS", "LOSS_BOUND", "RATIO_GRID", "RISKS", "TOPP_GRID", "CertificateError", "GridPoint",
    "RiskTable", "certified_frontier", "certified_rows", "certified_strategy", "certify", "check_certify_args",
    "check_enough_units", "check_families", "check_fingerprint", "check_request", "chosen_point", "default_grid",
    "frontier_epsilons", "grid_points", "held_out_check", "load_certificate", "measure_risks", "model_meta", "needed_units", "recertify",
    "save_certificate", "split_experiment", "strategy_from_description",
]
