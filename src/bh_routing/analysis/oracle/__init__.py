"""What alpha bounds: false discoveries and power of a routing against an ablation oracle.

BH's guarantee is about hypotheses H_e "expert e is not needed for this token". The p-values
are built against other nulls (the calibration's "expert e is not in the model's top-k", or the
per-token empirical null), so whether alpha bounds anything about *needed* experts is a
measurement, made here.

**The oracle.** At a token and MoE layer, expert e is *needed* when removing it from the model's
own top-k changes the routed MoE output by more than ``tau`` in relative L2,
:math:`\\lVert O - O_{-e}\\rVert / \\lVert O\\rVert > \\tau` (exact, from
:mod:`bh_routing.models.ablation`). Experts outside the model's top-k are *not needed* by this
definition: the reference output does not contain them. So any selection outside the top-k is a
false discovery, and an experts budget beyond k can only add false discoveries. A block-output
definition (rather than the next-token loss) is local to the layer whose routing is tested,
exact, and costs one extra MoE pass; a loss-based one would need a forward per (token, layer,
expert) and mixes in every later layer's response.

**Per family, as BH bounds it.** Each (token, layer) is one family of E hypotheses. Its false
discovery proportion counts BH's *discoveries* only: the experts BH itself rejected, at most
``max_k`` of them; experts forced in by ``min_k`` are not discoveries. FDP = V / max(R, 1).
For the baselines (and for "all selected" with BH) every selected expert counts. Power = needed
experts selected / needed experts. Per sequence: the mean FDP over its (token, layer) families
(what the FDR, an expectation per family, is estimated by) and the pooled power. Intervals are
over sequences (the exchangeable unit), never tokens.

**Matched comparisons.** A baseline at BH's mean experts per token k̄ (over all layers and
tokens): top-k between the two integers around k̄, top-p and weight-ratio between the two
parameters (found by bisection) whose mean k brackets k̄, each per-sequence value interpolated
linearly in mean k - the exact expected value of choosing the two settings at random per token
in those proportions.

The BH strategies are evaluated on logits recorded once with the model routing by its own top-k
(every layer's hidden states as the model makes them); :func:`record` also works inside
:func:`bh_routing.models.patched`, for the selection as deployed.

**On a big model** (OLMoE-1B-7B: 16 MoE layers, 64 experts, top-8, hidden size 2048) the record
costs one forward pass plus the model's k routed (token, expert) pairs once more per layer (the
ablation needs each expert's output separately; the k ablated outputs then follow by arithmetic),
i.e. about twice the MoE compute of a plain forward, batch by batch on the accelerator, with a
transient of tokens x k x hidden per layer call. What is kept, on the CPU, is the logits, the
model's top-k indices, weights and effects: tokens x layers x (E + 4k) x 4 bytes (32 x 256
tokens: about 50 MB). Every BH setting and baseline is then evaluated from it without the model.
"""


from .baselines import Ranking, bracket, matched
from .nulls import LEVELS, null_rejection_rates
from .record import TAU, TAUS, OracleData, OracleRouting, record
from .selection import Selection, per_doc, per_layer, per_sequence, per_sequence_taus, select, summarize
from .step import BASELINES, CALIBRATED, bh_variants, fdr_oracle, fdr_step, oracle_alphas

__all__ = [
    "BASELINES", "CALIBRATED", "LEVELS", "TAU", "TAUS", "OracleData", "OracleRouting", "Ranking", "Selection",
    "bh_variants", "bracket", "fdr_oracle", "fdr_step", "matched", "null_rejection_rates", "oracle_alphas", "per_doc",
    "per_layer", "per_sequence", "per_sequence_taus", "record", "select", "summarize",
]
