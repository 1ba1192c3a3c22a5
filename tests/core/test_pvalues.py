"""p-value constructions: their null distributions, temperature, the conformal code paths.

The FDR that BH gets from each construction is simulated in test_fdr_simulations.py (the standardised
null's at the end of this file).
"""

import numpy as np
import pytest
import scipy.stats
import torch

from bh_routing import CalibrationBuilder, apply_temperature, bh_select, conformal_pvalues, empirical_null_pvalues
from bh_routing.core.pvalues import standardized_pvalues


def test_empirical_null_matches_scipy():
    z = torch.randn(50, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = empirical_null_pvalues(z).numpy()
    zn = z.numpy()
    med = np.median(zn, axis=1, keepdims=True)  # numpy's median averages the middle two...
    # ...torch's takes the lower middle; compare with the same centre for an exact check
    med = np.sort(zn, axis=1)[:, 31:32]
    mad = np.sort(np.abs(zn - med), axis=1)[:, 31:32]
    expected = scipy.stats.norm.sf((zn - med) / (mad * 1.482602218505602))
    # torch's ndtr and scipy's sf differ by ~1e-9 relative deep in the tail
    np.testing.assert_allclose(p, expected, rtol=1e-7, atol=1e-300)
    assert p.dtype == np.float64


def test_empirical_null_constant_row_gives_one_half():
    p = empirical_null_pvalues(torch.zeros(2, 8))
    assert torch.equal(p, torch.full((2, 8), 0.5))


def test_empirical_null_is_scale_and_shift_free_so_temperature_does_nothing():
    z = torch.randn(100, 64, dtype=torch.float64)
    base = empirical_null_pvalues(z)
    torch.testing.assert_close(empirical_null_pvalues(3.0 * z + 7.0), base)
    for t in (0.25, 0.5, 2.0, 8.0):
        torch.testing.assert_close(empirical_null_pvalues(z, temperature=t), base)


def test_temperature_equals_softmax_temperature():
    z = torch.randn(10, 16, dtype=torch.float64)
    for t in (0.5, 2.0):
        torch.testing.assert_close(torch.softmax(apply_temperature(z, t), -1), torch.softmax(z / t, -1))


def test_conformal_pvalues_definition():
    # one expert, null sample 1..9 (n = 9): p(z) = (1 + #{null >= z}) / 10
    table = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8, 9]])
    z = torch.tensor([[0.0], [5.0], [5.5], [9.0], [100.0]])
    p = conformal_pvalues(z, table, torch.tensor([9]))
    assert p.flatten().tolist() == pytest.approx([1.0, 0.6, 0.5, 0.2, 0.1])
    # -inf padding does not count
    padded = torch.cat([torch.full((1, 3), -float("inf")), table], dim=1)
    torch.testing.assert_close(conformal_pvalues(z, padded, torch.tensor([9])), p)


def test_conformal_pvalues_are_superuniform_under_exchangeability():
    # validity is marginal over the calibration draw: use many independent calibrations (one per
    # "expert" column), each of n = 99 null values, and a few test points for each
    rng = torch.Generator().manual_seed(0)
    n, e, t = 99, 4000, 10
    null = torch.randn(e, n, generator=rng).sort(dim=1).values
    test = torch.randn(t, e, generator=rng)
    p = conformal_pvalues(test, null, torch.full((e,), n))
    for level in (0.01, 0.05, 0.2, 0.5):
        frac = (p <= level).float().mean().item()
        # binomial error of the t*e test points + spread of the e calibrations
        se = np.sqrt(level * (1 - level) / p.numel() + level * (1 - level) / (n * e))
        assert frac <= level + 4 * se
    assert (p <= 0.5).float().mean().item() > 0.45  # and not trivially conservative


def test_calibrated_temperature_direction():
    builder = CalibrationBuilder(num_layers=1, num_experts=16, top_k=2, null="all")
    g = torch.Generator().manual_seed(1)
    builder.update(0, torch.randn(4000, 16, generator=g))
    cal = builder.finalize(model_name="m", model_fingerprint="f")
    z = torch.randn(500, 16, generator=g)
    z[:, :3] += 3.0
    counts = [
        bh_select(cal.pvalues(z, 0, temperature=t), 0.1).sum().item() for t in (0.5, 1.0, 2.0)
    ]
    assert counts[0] > counts[1] > counts[2]


@pytest.mark.parametrize("block", [None, 3])
def test_conformal_code_paths_agree(monkeypatch, block):
    # three implementations of the same count: searchsorted (float64 tables, or few tokens),
    # the merged sort with per-query arithmetic (R/4 <= T < R) and the merged sort with the
    # (E, R + 1) lookup (T >= R); with block=3 the merged sort runs in several blocks of experts
    from bh_routing.core import pvalues as pv

    if block is not None:
        monkeypatch.setattr(pv, "_MERGE_BLOCK", block * 600)
    g = torch.Generator().manual_seed(0)
    e, r = 8, 160
    values = torch.randn(e, r, generator=g).round(decimals=1)  # ties within and across rows
    values[:, :20] = -float("inf")  # padding on the left (n_e < R)
    values[0, 30:40] = -0.0
    table = values.sort(dim=1).values
    count = (table > -float("inf")).sum(dim=1)
    z = torch.randn(2 * r, e, generator=g).round(decimals=1)  # queries equal to table values too
    z[::7, 0] = 0.0
    z[1::7, 0] = -0.0
    z[2::7] = table[:, -1]  # the largest null value: p = 1 / (n + 1)
    reference = conformal_pvalues(z.double(), table.double(), count)  # searchsorted
    assert reference.dtype == torch.float32
    for t in (2 * r, r, r // 2, r // 4, r // 8):  # lookup, lookup, per-query, per-query, searchsorted
        part = z[:t]
        assert pv._merge_applies(table, part) == (4 * t >= r)
        torch.testing.assert_close(conformal_pvalues(part, table, count), reference[:t], rtol=0, atol=0)
    # and the definition, counted directly
    direct = (1 + (table.T[None] >= z[:, None]).sum(dim=1)).float() / (count + 1).float()  # (T, E)
    torch.testing.assert_close(reference, direct.clamp(max=1.0), rtol=0, atol=0)


# ------------------------------------------------------------------ FDR simulation helpers (standardised null)
E, E1, SHIFT = 64, 6, 4.0


def _simulate_tokens(gen, tokens):
    z = torch.randn(tokens, E, generator=gen, dtype=torch.float64)
    z[:, :E1] += SHIFT
    return z


def _fdr(selected):
    false = selected[:, E1:].sum(dim=1).double()
    total = selected.sum(dim=1).clamp(min=1).double()
    fdp = false / total
    return fdp.mean().item(), fdp.std().item() / np.sqrt(len(fdp))


# ------------------------------------------------------------------ standardised null
def _pure_null_calibration(gen, tokens=4000, pooled=65536):
    builder = CalibrationBuilder(num_layers=1, num_experts=E, top_k=1, null="all", reservoir_size=64, pooled_size=pooled)
    builder.update(0, torch.randn(tokens, E, generator=gen))
    return builder.finalize(model_name="sim", model_fingerprint="sim")


def test_standardized_definition_matches_scipy_and_counting():
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(50, E, generator=gen, dtype=torch.float64)
    null = torch.randn(999, generator=gen).sort().values
    p = standardized_pvalues(z, null, 999).numpy()
    zn = z.numpy()
    med = np.sort(zn, axis=1)[:, 31:32]  # the lower median, as the empirical null
    mad = np.sort(np.abs(zn - med), axis=1)[:, 31:32]
    u = ((zn - med) / (mad * 1.482602218505602)).astype(np.float32)
    expected = (1 + (null.numpy()[None, None, :] >= u[..., None]).sum(-1)) / 1000.0
    np.testing.assert_allclose(p, expected, rtol=1e-6)


def test_standardized_is_superuniform_under_its_null():
    # tokens drawn like the calibration text: every expert is null; validity is marginal over
    # the calibration draw, so use several calibrations
    gen = torch.Generator().manual_seed(12)
    ps = []
    for _ in range(10):
        cal = _pure_null_calibration(gen, tokens=1000, pooled=8192)
        ps.append(cal.standardized_pvalues(torch.randn(500, E, generator=gen), 0))
    p = torch.cat(ps)
    for level in (0.001, 0.01, 0.05, 0.2, 0.5):
        frac = (p <= level).double().mean().item()
        se = np.sqrt(level * (1 - level) / (len(p) * 8))  # dependent within a token: ~8 effective per token
        assert frac <= level + 4 * se + 1 / 8193, level
    assert (p <= 0.5).double().mean().item() > 0.45  # and not trivially conservative


def test_standardized_is_rank_consistent_and_scale_free():
    gen = torch.Generator().manual_seed(13)
    cal = _pure_null_calibration(gen, tokens=500)
    z = torch.randn(300, E, generator=gen)
    p = cal.standardized_pvalues(z, 0)
    by_logit = z.argsort(dim=1, descending=True)
    assert torch.all(p.gather(1, by_logit).diff(dim=1) >= 0)  # larger logit, smaller or equal p
    for t in (0.5, 2.0):
        same = (cal.standardized_pvalues(z, 0, temperature=t) == p).double().mean().item()
        assert same > 0.999  # equal but for scores that land on a null value after rounding


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_fdr_controlled_standardized_null(alpha):
    gen = torch.Generator().manual_seed(14)
    selected = []
    for _ in range(10):
        cal = _pure_null_calibration(gen, tokens=1500)
        selected.append(bh_select(cal.standardized_pvalues(_simulate_tokens(gen, 1000).float(), 0), alpha))
    selected = torch.cat(selected)
    fdr, se = _fdr(selected)
    assert fdr <= alpha * (E - E1) / E + 3 * se
    assert selected[:, :E1].float().mean() > 0.5  # and it has power
