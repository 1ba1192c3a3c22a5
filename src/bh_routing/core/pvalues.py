"""p-values for routing: each says how unusual expert e's router logit is for this token.

The hypothesis the project cares about is H_e "expert e is not needed for this token". None of the
constructions here tests it directly; each is valid for a narrower null, stated below, and what
BH's alpha then bounds for "not needed" is measured, not assumed (an ablation oracle:
:mod:`bh_routing.analysis.oracle`, the run's ``fdr_oracle`` step; ``docs/fdr_oracle.md``).

* :func:`conformal_pvalues` - a calibrated (conformal) null per layer and expert, from logits
  recorded on a calibration text (see :class:`bh_routing.core.calibration.Calibration`). With the
  default "unrouted" null it is super-uniform for H'_e "e is not in the model's top-k for this
  token" - a fact of the router, not "not needed" - when the calibration tokens are exchangeable
  with the routed ones. Routing the layers below differently from the calibration run breaks that
  from layer 1 on (sequential calibration, :mod:`bh_routing.core.sequential`, repairs most of it;
  measured in ``docs/fdr_oracle.md``), and so does calibration text unlike the evaluated text.
* :func:`standardized_pvalues` - the empirical null's per-token standardisation with a
  calibrated (conformal) tail: one pooled null per layer of standardised scores. With the
  "unrouted" null it is, like the per-expert one, a test of "e is not in the top-k", and it
  further assumes one null distribution for every expert of a layer.
* :func:`empirical_null_pvalues` - a per-token empirical null (Efron 2004): needs no calibration;
  approximate, and liberal for tokens without several clearly separated experts (simulated in
  ``tests/core/test_fdr_simulations.py``).

Rank consistency. The empirical and the standardised p-values are decreasing functions of the
logit within a token, so the experts with the k smallest p-values are the router's top k (up
to ties): taking BH's experts in p-value order or in the router's order is the same. The
per-expert calibrated p-values are not: each expert has its own null, and the smallest p-value
need not belong to the largest logit.

Two naive constructions are *not* offered because they are degenerate: ``1 - softmax`` (every
probability is far above alpha/E, so BH selects at most the forced minimum at every alpha) and
``rank / E`` (the same p-values for every token, hence a constant k).

Temperature. For a temperature ``tau > 0`` the logits of each token are spread about their
median m: ``z -> m + (z - m) / tau``. Because the softmax is shift-invariant this changes the
router's probabilities exactly as the usual ``softmax(z / tau)`` would. Its effect depends on the
p-value method:

* empirical null and standardised null: none. The z-scores ``(z - median) / MAD`` are
  invariant to that map, so the p-values, and the selection, do not change (tests check it).
* calibrated null: ``tau < 1`` pushes logits away from the token's median, so above-median
  logits look more extreme against the (untempered) calibration null - more experts.
  ``tau > 1`` pulls them in - mostly fewer experts, but below-median logits move *up* and can
  look extreme for an expert whose null sits low, so the count is not monotone in ``tau`` on a
  real model (measured in the run report). ``tau = 1`` is the calibrated, valid test.
"""

from __future__ import annotations

import numpy as np
import torch

from ._paths import host_fast
from ._validate import check_logits, check_temperature

MAD_TO_SD = 1.482602218505602  # 1 / Phi^{-1}(3/4): the MAD of a normal sample estimates 0.6745 sd


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Spread the logits of each token about their median by ``1/temperature``.

    :math:`z_e \\mapsto m + (z_e - m)/\\tau`, :math:`m = \\mathrm{median}_e z_e`; equal to the
    softmax temperature :math:`\\mathrm{softmax}(z/\\tau)` after the shift.

    Parameters
    ----------
    logits : torch.Tensor, shape (T, E)
    temperature : float, > 0

    Returns
    -------
    torch.Tensor, shape (T, E), the dtype of ``logits``.
    """
    temperature = check_temperature(temperature)
    if temperature == 1.0:
        return logits
    m = _lower_median(logits)  # (T, 1)
    return m + (logits - m) / temperature


def _lower_median(x: torch.Tensor) -> torch.Tensor:
    """``x.median(dim=-1, keepdim=True).values``: the ((E - 1) // 2)-th smallest of each row.

    On the CPU (float32/float64, no autograd) numpy's SIMD selection finds the same element
    several times faster than ``torch.median`` on short rows.
    """
    if host_fast(x) and x.dtype in (torch.float32, torch.float64) and x.dim() == 2:
        m = (x.shape[-1] - 1) // 2
        return torch.from_numpy(np.partition(x.numpy(), m, axis=-1)[:, m : m + 1].copy())  # (T, 1)
    return x.median(dim=-1, keepdim=True).values


def empirical_null_pvalues(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Per-token empirical-null p-values (Efron 2004).

    The null assumed: for one token, the logits of the experts it does not need are a normal
    sample whose centre and scale are estimated robustly from all E logits of that token,
    :math:`\\hat\\mu = \\mathrm{median}_e z_e`, :math:`\\hat\\sigma = 1.4826\\,
    \\mathrm{median}_e |z_e - \\hat\\mu|`, and

    .. math:: p_e = 1 - \\Phi\\big((z_e - \\hat\\mu)/\\hat\\sigma\\big).

    The null it tests: expert e's logit is a typical draw from the normal fitted to its own token's
    logits. Approximate: the median and MAD of E = 64 values are noisy enough that BH's thresholds
    (z of about 3 and more) see too light a tail. With several clearly separated "signal" logits per
    token the noise in the centre and scale errs on the conservative side and BH holds
    alpha * E0 / E; with none, BH selects something in far more than alpha of pure-noise tokens
    (``tests/core/test_fdr_simulations.py``). No calibration is needed. Scale-free: the
    temperature has no effect. A token whose logits are all equal (MAD 0) gets p = 0.5 everywhere.

    Parameters
    ----------
    logits : torch.Tensor, shape (T, E)
    temperature : float, default 1.0
        Accepted for a uniform interface; it does not change the result (see module notes).

    Returns
    -------
    torch.Tensor, shape (T, E), float32 (float64 if the logits are float64).
    """
    check_logits(logits)
    return _empirical_null_pvalues(logits, temperature)


def _empirical_null_pvalues(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`empirical_null_pvalues` without validating the logits (the caller did)."""
    z = _tempered(logits, temperature)
    centre = _lower_median(z)  # (T, 1)
    scale = MAD_TO_SD * _lower_median((centre - z).abs())  # (T, 1)
    return normal_tail(neg_zscores(z, centre, scale))


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The tempered logits in the dtype the p-values are computed in (float64 or float32)."""
    z = apply_temperature(logits, temperature)
    return z.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def neg_zscores(z: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``-(z - centre) / scale``, computed as ``(centre - z) / scale``; 0 on rows whose scale is 0.

    z: (T, W) any subset of a token's logits; centre, scale: (T, 1). Every p-value path (full,
    or the router-selection count on a few logits) goes through this one function, so they
    agree to the bit. ``c - z`` is exactly ``-(z - c)`` in IEEE arithmetic and ``(c - z) / s``
    exactly ``-((z - c) / s)``; both are monotone in ``z``.
    """
    flat = scale <= 0  # (T, 1): all logits equal (MAD 0): zscore 0
    safe = scale.masked_fill(flat, 1.0)  # (T, 1)
    neg = (centre - z) / safe  # (T, W)
    return neg.masked_fill(flat, 0.0)  # unconditionally: asking whether any row is flat is a host read


def normal_tail(neg_zscore: torch.Tensor) -> torch.Tensor:
    """Upper normal tail ``1 - Phi(zscore)`` of ``-zscore``: the empirical null's p-value."""
    return torch.special.ndtr(neg_zscore)


def standardized_pvalues(
    logits: torch.Tensor,
    null_sorted: torch.Tensor,
    null_count: torch.Tensor | int,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token standardisation with a calibrated (conformal) tail: Efron's null, tail not assumed normal.

    Each token's logits are standardised as the empirical null does,
    :math:`u_e = (z_e - \\hat\\mu)/\\hat\\sigma` with :math:`\\hat\\mu` the median and
    :math:`\\hat\\sigma = 1.4826\\,\\mathrm{MAD}` of the token's E logits, and the tail of
    :math:`u` comes from a calibration sample :math:`u_1..u_n` of standardised scores of the same
    MoE layer, pooled over experts (see :class:`bh_routing.core.calibration.Calibration`):

    .. math:: p_e = \\frac{1 + \\#\\{i : u_i \\ge u_e\\}}{n + 1}.

    The null: expert e's standardised score is exchangeable with the layer's pooled calibration
    scores (the scores of the calibration's null: experts outside the model's top-k with
    ``null="unrouted"``, every expert with ``"all"``). Then p_e is super-uniform for that null
    (Vovk et al. 2005) - with "unrouted", H'_e "e is not in this token's top-k", not "e is not
    needed" (what alpha bounds for needed experts is measured by :mod:`bh_routing.analysis.oracle`);
    as for :func:`conformal_pvalues`, no FDR result for the E dependent p-values of one token is
    claimed. Validity conditions, which are stronger than the per-expert calibrated null's: (i) the calibration text comes from the distribution of the
    routed tokens; (ii) pooling needs the unneeded experts' standardised scores to share one
    distribution across experts (an expert whose null sits higher than the others' gets
    too-small p-values; the per-expert null does not assume this); (iii) the sample holds
    several scores of each calibration token, which are dependent, so exchangeability with a
    new score holds for the pooled marginal, not token by token. What it buys: ``p_e`` is a
    decreasing function of the logit within a token (rank-consistent: BH's experts are the
    router's top k), and the pooled sample is E times larger than one expert's, so the
    smallest attainable p-value ``1/(n+1)`` is much smaller. Scale-free like the empirical null:
    the temperature has no effect.

    Parameters
    ----------
    logits : torch.Tensor, shape (T, E)
    null_sorted : torch.Tensor, shape (R,)
        The layer's pooled standardised null sample, ascending, ``-inf`` padding on the left.
    null_count : torch.Tensor or int
        ``n``, the number of real values in ``null_sorted``.
    temperature : float, default 1.0
        Accepted for a uniform interface; it does not change the result.

    Returns
    -------
    torch.Tensor, shape (T, E), float32.
    """
    check_logits(logits)
    if null_sorted.dim() != 1:
        raise ValueError(f"null_sorted must have shape (R,), got {tuple(null_sorted.shape)}")
    return _standardized_pvalues(logits, null_sorted, null_count, temperature)


def _standardized_pvalues(logits, null_sorted, null_count, temperature: float) -> torch.Tensor:
    """:func:`standardized_pvalues` without validating the inputs (the caller did)."""
    z = _tempered(logits, temperature)
    centre = _lower_median(z)  # (T, 1)
    scale = MAD_TO_SD * _lower_median((centre - z).abs())  # (T, 1)
    return pooled_tail(neg_zscores(z, centre, scale), null_sorted, null_count)


def pooled_tail(neg_zscore: torch.Tensor, null_sorted: torch.Tensor, null_count: torch.Tensor | int) -> torch.Tensor:
    """Conformal p-values ``(1 + #{null >= u}) / (n + 1)`` of the scores ``u = -neg_zscore`` (T, W).

    null_sorted: (R,) ascending. Same float32 arithmetic as :func:`conformal_pvalues`.
    """
    u = (-neg_zscore).to(torch.float32).contiguous()  # (T, W)
    table = null_sorted.to(u.device, torch.float32)  # (R,)
    below = torch.searchsorted(table, u, side="left")  # (T, W): # values < u
    n = torch.as_tensor(null_count, device=u.device).to(torch.float32)
    return ((1.0 + (table.shape[0] - below).to(torch.float32)) / (n + 1.0)).clamp(max=1.0)


def conformal_pvalues(
    logits: torch.Tensor,
    null_sorted: torch.Tensor,
    null_count: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Conformal p-values against a per-expert calibration null.

    The null: expert e's logit on the new token is exchangeable with the calibration sample
    :math:`z^{(e)}_1..z^{(e)}_{n_e}` of that layer and expert. Then

    .. math:: p_e = \\frac{1 + \\#\\{i : z^{(e)}_i \\ge z_e\\}}{n_e + 1}

    is super-uniform (Vovk et al. 2005). Which hypothesis that is depends on the sample: with the
    "unrouted" null (e's logits on calibration tokens whose top-k did not contain e) it is H'_e
    "e is not in this token's top-k", not "e is not needed"; with "all" it is conservative for
    H'_e. Exchangeability needs the calibration text to come from the distribution of the routed
    tokens *and* the layers below to be routed as in the calibration run (see the module notes).
    Bates, Candes, Lei, Romano & Sesia (2023, Ann. Statist. 51(1)) show FDR control for BH over
    many test points against one calibration set; the E p-values of one token are a different,
    dependent family, for which no such result is claimed here (simulations:
    ``tests/core/test_fdr_simulations.py``). The smallest attainable p-value is
    :math:`1/(n_e+1)`, so BH at level alpha needs :math:`n_e + 1 \\ge E/\\alpha` to select
    anything beyond ``min_k``.

    Parameters
    ----------
    logits : torch.Tensor, shape (T, E)
    null_sorted : torch.Tensor, shape (E, R)
        Each expert's null sample sorted ascending, padded on the left with ``-inf`` where
        ``n_e < R``.
    null_count : torch.Tensor, shape (E,)
        ``n_e``, the number of real (non-padding) values in each row.
    temperature : float, default 1.0
        See the module notes: ``tau != 1`` departs from the calibrated test on purpose.

    Returns
    -------
    torch.Tensor, shape (T, E), float32.
    """
    check_logits(logits)
    num_experts = logits.shape[-1]
    if null_sorted.dim() != 2 or null_sorted.shape[0] != num_experts:
        raise ValueError(
            f"null_sorted must have shape (E={num_experts}, R), got {tuple(null_sorted.shape)}"
        )
    return _conformal_pvalues(logits, null_sorted, null_count, temperature)


def _conformal_pvalues(logits, null_sorted, null_count, temperature: float) -> torch.Tensor:
    """:func:`conformal_pvalues` without validating the inputs (the caller did)."""
    z = apply_temperature(logits, temperature).to(null_sorted.dtype)
    return _conformal_counts(z, null_sorted, null_count)


def _conformal_counts(z: torch.Tensor, null_sorted: torch.Tensor, null_count: torch.Tensor) -> torch.Tensor:
    """The conformal p-values (T, E) of scores ``z`` against sorted per-column tables (E, R)."""
    table = null_sorted.to(z.device)
    n = null_count.to(z.device, torch.float32).unsqueeze(1)  # (E, 1)
    if _merge_applies(table, z):
        return _conformal_merged(table, n, z)  # (T, E)
    # for each expert row: number of null values >= z
    below = torch.searchsorted(table, z.T.contiguous(), side="left")  # (E, T): # values < z
    count_ge = table.shape[1] - below  # (E, T)
    p = (1.0 + count_ge.to(torch.float32)) / (n + 1.0)  # (E, T)
    return p.T.clamp(max=1.0)  # (T, E)


def _merge_applies(table: torch.Tensor, z: torch.Tensor) -> bool:
    """Whether :func:`_conformal_merged` is used: many tokens, CPU, float32, no autograd."""
    return (
        host_fast(z)
        and table.device.type == "cpu"
        and table.dtype == torch.float32
        and z.dtype == torch.float32
        and not z.requires_grad
        and 4 * z.shape[0] >= table.shape[1]  # below that, T binary searches are cheaper than the sort
        and z.shape[0] < 2**30
    )


def _conformal_merged(table: torch.Tensor, n: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The conformal p-values (T, E) of the searchsorted branch, exactly, by one merged sort per expert.

    ``below[e, t] = #{i : table[e, i] < z[t, e]}`` without T binary searches: every value becomes
    an integer key that orders like the value (-0.0 = +0.0), shifted left to hold a tag (a query
    0 sorts before a table value 1 of the same value: only values strictly below count) and the
    query's token index. After numpy's SIMD sort of each expert's row, the i-th query of row e
    sits at position j with ``j - i`` table values before it. Its p-value - looked up among the
    expert's R + 1 possible ones when T >= R, else computed per query; the same float32
    arithmetic as the searchsorted branch either way - goes straight into the (T, E) layout.
    """
    num_experts, size = table.shape
    num_tokens = z.shape[0]
    bits = max(1, (num_tokens - 1).bit_length())  # room for the token index
    width = size + num_tokens
    table_keys = np.left_shift(_orderable(table.numpy()), bits + 1, dtype=np.int64)  # (E, R)
    table_keys |= 1 << bits  # tag 1: table values sort after queries of the same value
    queries = _orderable(z.T.contiguous().numpy())  # (E, T) int32
    tokens = np.arange(num_tokens, dtype=np.int64)
    use_lookup = num_tokens >= size
    if use_lookup:  # the expert's R + 1 possible p-values, with the arithmetic of the other branch
        below = torch.arange(size + 1, dtype=torch.float32)  # (R + 1,)
        lookup = ((1.0 + (size - below)) / (n + 1.0)).clamp(max=1.0).numpy()  # (E, R + 1)
    else:
        denominator = n.numpy() + np.float32(1.0)  # (E, 1)
    out = np.empty((num_experts, num_tokens), np.float32)  # (E, T): each block scatters within its rows
    step = max(1, _MERGE_BLOCK // width)  # experts per block: the int64 temporaries stay in cache
    for e0 in range(0, num_experts, step):
        e1 = min(e0 + step, num_experts)
        keys = np.empty((e1 - e0, width), np.int64)  # (c, R + T)
        keys[:, :size] = table_keys[e0:e1]
        keys[:, size:] = queries[e0:e1]
        keys[:, size:] <<= bits + 1
        keys[:, size:] |= tokens  # tag 0 and the token index
        keys.sort(axis=1)
        flat = keys.reshape(-1)
        at = np.flatnonzero((flat & (1 << bits)) == 0)  # (c * T,): the queries, row by row, in sorted order
        token = (flat[at] & ((1 << bits) - 1)).reshape(e1 - e0, num_tokens)  # (c, T)
        # query i of row r sits at j = at - r * (R + T), with j - i table values below it
        rows = np.arange(e1 - e0, dtype=np.int64)[:, None]  # (c, 1)
        if use_lookup:  # entry r * (R + 1) + j - i of the block's lookup rows
            at -= (rows * (num_tokens - 1) + tokens).reshape(-1)
            p = lookup[e0:e1].reshape(-1)[at].reshape(e1 - e0, num_tokens)  # (c, T)
        else:  # the same float32 arithmetic on each query
            at -= (rows * width + tokens).reshape(-1)  # values below
            count_ge = (size - at).astype(np.float32).reshape(e1 - e0, num_tokens)  # (c, T)
            p = (np.float32(1.0) + count_ge) / denominator[e0:e1]  # (c, T)
            np.minimum(p, np.float32(1.0), out=p)
        out[e0:e1].reshape(-1)[(token + rows * num_tokens).reshape(-1)] = p.reshape(-1)  # back to token order
    return torch.from_numpy(out).T.contiguous()  # (T, E)


_MERGE_BLOCK = 1 << 18  # int64 keys per block of experts in _conformal_merged (2 MiB)


def _orderable(a: np.ndarray) -> np.ndarray:
    """int32 keys that order like the float32 values ``a`` (-0.0 and +0.0 equal, -inf first)."""
    i = np.add(a, np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
    return i ^ ((i >> 31) & np.int32(0x7FFFFFFF))  # negative floats: reverse the magnitude order
