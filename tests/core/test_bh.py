"""bh_select / bh_adjust against statsmodels and scipy, worked examples, edge cases, properties."""

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from bh_routing import bh_adjust, bh_count, bh_select

# Benjamini & Hochberg (1995), section 4: 15 p-values; at q = 0.05 the procedure rejects 4.
BH1995 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344,
          0.0459, 0.3240, 0.4262, 0.5719, 0.6528, 0.7590, 1.0000]


def reference(p: np.ndarray, alpha: float) -> np.ndarray:
    return multipletests(p, alpha=alpha, method="fdr_bh")[0]


def test_bh1995_worked_example():
    p = torch.tensor(BH1995, dtype=torch.float64)
    sel = bh_select(p, 0.05)
    assert sel.tolist() == [True] * 4 + [False] * 11
    assert sel.tolist() == reference(np.array(BH1995), 0.05).tolist()


def _random_rows(rng, rows, n):
    """Mixtures of uniform nulls and small 'signal' p-values, with deliberate ties."""
    null = rng.uniform(size=(rows, n))
    signal = rng.beta(0.1, 8.0, size=(rows, n))
    frac = rng.uniform(size=(rows, 1))
    p = np.where(rng.uniform(size=(rows, n)) < frac, signal, null)
    p[: rows // 4] = np.round(p[: rows // 4], 2)  # ties
    return p


@pytest.mark.parametrize("n", [1, 2, 8, 64, 256])
@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.2, 1.0])
def test_agrees_with_statsmodels_and_scipy(n, alpha):
    rng = np.random.default_rng(n * 1000 + int(alpha * 1000))
    p = _random_rows(rng, 1000, n)
    ours = bh_select(torch.from_numpy(p), alpha).numpy()
    ref = np.stack([reference(row, alpha) for row in p])
    np.testing.assert_array_equal(ours, ref)
    adj_scipy = scipy.stats.false_discovery_control(p, axis=-1, method="bh")
    np.testing.assert_allclose(bh_adjust(torch.from_numpy(p)).numpy(), adj_scipy, rtol=1e-12, atol=0)
    ref_adj = np.stack([multipletests(row, method="fdr_bh")[1] for row in p])
    np.testing.assert_allclose(bh_adjust(torch.from_numpy(p)).numpy(), ref_adj, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 7, 64, 256])
def test_float32_path_agrees_with_statsmodels(n):
    # float32 on the CPU takes a different (integer-key) sort path: same oracle, incl. ties and zeros
    rng = np.random.default_rng(n)
    p32 = _random_rows(rng, 2000, n).astype(np.float32)
    p32[::50, 0] = 0.0
    p32[1::50, :] = -0.0  # negative zero is a valid p-value of 0
    for alpha in (0.01, 0.05, 0.3, 1.0):
        ours = bh_select(torch.from_numpy(p32), alpha).numpy()
        ref = np.stack([reference(row.astype(np.float64), alpha) for row in p32])
        np.testing.assert_array_equal(ours, ref)
        k, order = bh_count(torch.from_numpy(p32), alpha, min_k=1, max_k=min(n, 8))
        k64, order64 = bh_count(torch.from_numpy(p32.astype(np.float64)), alpha, min_k=1, max_k=min(n, 8))
        assert torch.equal(k, k64) and torch.equal(order, order64)


def test_all_null_and_all_signal():
    assert not bh_select(torch.full((3, 64), 0.9), 0.05).any()
    assert bh_select(torch.full((3, 64), 1e-6), 0.05).all()
    assert bh_select(torch.ones(2, 5), 1.0).all()  # alpha = 1 rejects p = 1 (p_(E) <= E/E)


def test_dtypes_kept_and_handled():
    p = torch.rand(10, 64, dtype=torch.float64)
    assert bh_adjust(p).dtype == torch.float64
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        out = bh_select(p.to(dtype), 0.1)
        assert out.dtype == torch.bool and out.shape == p.shape
        assert bh_adjust(p.to(dtype)).dtype == torch.float64  # exact for every alpha: see its docstring
    # bf16 rounding aside, the decision is made on the rounded values exactly as in float64
    pb = p.to(torch.bfloat16)
    np.testing.assert_array_equal(
        bh_select(pb, 0.1).numpy(), bh_select(pb.to(torch.float64), 0.1).numpy()
    )


def test_issue_example_adjust_agrees_with_select_in_bfloat16():
    p = torch.tensor([0.001, 0.02, 0.03, 0.5], dtype=torch.bfloat16)
    assert (bh_adjust(p) <= 0.04).tolist() == bh_select(p, 0.04).tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_adjust_below_alpha_is_select_in_every_dtype(dtype):
    rng = np.random.default_rng(6)
    p = torch.from_numpy(_random_rows(rng, 20000, 8)).to(dtype)
    p[:500] = torch.from_numpy(rng.choice([0.001, 0.01, 0.02, 0.03, 0.04, 0.05, 0.5], size=(500, 8))).to(dtype)
    adjusted = bh_adjust(p)
    for alpha in (0.001, 0.01, 0.04, 0.05, 0.1, 1 / 3, 0.5, 1.0):
        assert torch.equal(adjusted <= alpha, bh_select(p, alpha)), alpha


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [4, 64])
def test_half_precision_agrees_with_statsmodels(dtype, n):
    # the oracle sees the same rounded values (as float64): select, count and adjust agree with it
    rng = np.random.default_rng(n)
    p = torch.from_numpy(_random_rows(rng, 2000, n)).to(dtype)
    exact = p.double().numpy()
    for alpha in (0.01, 0.04, 0.2):
        ref = np.stack([reference(row, alpha) for row in exact])
        np.testing.assert_array_equal(bh_select(p, alpha).numpy(), ref)
        k, _ = bh_count(p, alpha)
        np.testing.assert_array_equal(k.numpy(), ref.sum(axis=1))
    ref_adj = np.stack([multipletests(row, method="fdr_bh")[1] for row in exact])
    np.testing.assert_allclose(bh_adjust(p).numpy(), ref_adj, rtol=1e-12, atol=0)


def _reference_order(p: np.ndarray, pref: np.ndarray) -> np.ndarray:
    """Ascending p, then descending preference, then index (np.lexsort: last key first)."""
    index = np.broadcast_to(np.arange(p.shape[1]), p.shape)
    return np.lexsort((index, -pref.astype(np.float64), p.astype(np.float64)), axis=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,width", [(8, 3), (64, 8), (64, 64)])
def test_ties_broken_by_preference(dtype, n, width):
    # float32 takes the integer-key path (both of its modes: ties rare in the first block, then
    # common, which switches to the preference field), float64 the torch path
    rng = np.random.default_rng(n + width)
    rows = 30000 if n == 8 else 3000
    p = rng.uniform(size=(rows, n))
    p[rows // 3 :] = np.round(p[rows // 3 :] * 4) / 4  # many ties, at 0 and 1 too
    pref = rng.normal(size=(rows, n)).astype(np.float32)
    pref[::7, : n // 2] = pref[::7, :1]  # ties in the preference as well: then by index
    pref[::11] = np.round(pref[::11], 6) + np.float32(1e-6) * rng.integers(0, 2, size=(1, n))  # near-ties
    pt, prt = torch.from_numpy(p).to(dtype), torch.from_numpy(pref).to(dtype)
    k, order = bh_count(pt, 0.2, max_k=width, preference=prt)
    expected = _reference_order(pt.numpy(), prt.numpy())[:, :width]
    np.testing.assert_array_equal(order[:, :width].numpy(), expected)
    assert torch.equal(k, bh_count(pt, 0.2, max_k=width)[0])  # the count ignores the preference
    sel = bh_select(pt, 0.2, max_k=width, preference=prt)
    assert torch.equal(sel.sum(1), k)


def test_preference_checked():
    with pytest.raises(ValueError, match=r"preference must have the shape of p_values \(2, 3\), got \(3,\)"):
        bh_count(torch.rand(2, 3), 0.1, preference=torch.rand(3))
    with pytest.raises(TypeError, match="preference must be a floating torch.Tensor"):
        bh_count(torch.rand(2, 3), 0.1, preference=torch.ones(2, 3, dtype=torch.long))


def test_batched_over_leading_dimensions():
    p = torch.rand(3, 4, 5, 16)
    flat = bh_select(p.reshape(-1, 16), 0.2).reshape(p.shape)
    assert torch.equal(bh_select(p, 0.2), flat)


def test_clamp_takes_smallest_pvalues_ties_by_index():
    p = torch.tensor([[0.5, 0.2, 0.2, 0.9, 0.01]])
    assert bh_select(p, 1e-4).sum() == 0
    assert bh_select(p, 1e-4, min_k=1).tolist() == [[False, False, False, False, True]]
    # ties: 0.2 at experts 1 and 2 -> expert 1 first
    assert bh_select(p, 1e-4, min_k=2).tolist() == [[False, True, False, False, True]]
    assert bh_select(p, 1.0, max_k=3).tolist() == [[False, True, True, False, True]]
    k, order = bh_count(p, 1.0, max_k=3)
    assert k.tolist() == [3] and order[0, :3].tolist() == [4, 1, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    p = torch.rand(4096, 64)
    assert torch.equal(bh_select(p.cuda(), 0.05).cpu(), bh_select(p, 0.05))


# ---------------------------------------------------------------- properties (hypothesis)

pvals = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=40)
alphas = st.floats(1e-4, 1.0)


@settings(max_examples=300, deadline=None)
@given(pvals, alphas)
def test_step_up_prefix_property(ps, alpha):
    p = torch.tensor(ps, dtype=torch.float64)
    sel = bh_select(p, alpha)
    if sel.any():  # every selected p-value is <= every unselected one
        assert p[sel].max() <= p[~sel].min() if (~sel).any() else True
    assert sel.tolist() == reference(np.array(ps), alpha).tolist()


@settings(max_examples=200, deadline=None)
@given(pvals, alphas, alphas)
def test_monotone_in_alpha(ps, a1, a2):
    lo, hi = sorted((a1, a2))
    p = torch.tensor(ps, dtype=torch.float64)
    assert not (bh_select(p, lo) & ~bh_select(p, hi)).any()


@settings(max_examples=200, deadline=None)
@given(pvals, alphas, st.randoms(use_true_random=False))
def test_permutation_equivariant(ps, alpha, rnd):
    perm = list(range(len(ps)))
    rnd.shuffle(perm)
    p = torch.tensor(ps, dtype=torch.float64)
    perm_t = torch.tensor(perm)
    # counts are permutation invariant; the chosen set is too where there are no ties at the cut
    assert bh_select(p[perm_t], alpha).sum() == bh_select(p, alpha).sum()
    if len(set(ps)) == len(ps):
        assert torch.equal(bh_select(p[perm_t], alpha), bh_select(p, alpha)[perm_t])


@settings(max_examples=200, deadline=None)
@given(pvals, alphas, st.integers(0, 40), st.integers(1, 40))
def test_clamping_respected(ps, alpha, min_k, max_k):
    n = len(ps)
    min_k, max_k = min(min_k, n), min(max_k, n)
    if min_k > max_k:
        min_k, max_k = max_k, min_k
    max_k = max(max_k, 1)
    p = torch.tensor(ps, dtype=torch.float64)
    sel = bh_select(p, alpha, min_k=min_k, max_k=max_k)
    plain = int(bh_select(p, alpha).sum())
    assert int(sel.sum()) == min(max(plain, min_k), max_k)
    if sel.any() and (~sel).any():
        assert p[sel].max() <= p[~sel].min()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12), min_size=1, max_size=6), alphas)
def test_batched_equals_row_by_row(rows, alpha):
    p = torch.tensor(rows, dtype=torch.float64)
    batched = bh_select(p, alpha, min_k=1, max_k=8)
    for i, row in enumerate(p):
        assert torch.equal(batched[i], bh_select(row, alpha, min_k=1, max_k=8))
