"""Every bad input at the core's public boundary gets its own clear message."""

import pytest
import torch

from bh_routing import BH, TopK, TopP, WeightRatio, bh_adjust, bh_select, empirical_null_pvalues

P = torch.rand(4, 8)
Z = torch.randn(4, 8)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan")])
def test_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got"):
        bh_select(P, alpha)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got"):
        BH(alpha)


def test_alpha_wrong_type():
    with pytest.raises(TypeError, match="alpha must be a float in"):
        bh_select(P, "0.05")


def test_exact_alpha_message():
    with pytest.raises(ValueError) as e:
        bh_select(P, 1.5)
    assert str(e.value) == "alpha must be in (0, 1], got 1.5"


def test_min_k_greater_than_max_k():
    with pytest.raises(ValueError, match=r"min_k must be <= max_k, got min_k=5 > max_k=3"):
        bh_select(P, 0.05, min_k=5, max_k=3)
    with pytest.raises(ValueError, match="min_k must be <= max_k"):
        BH(0.05, min_k=5, max_k=3)


def test_max_k_greater_than_experts():
    with pytest.raises(ValueError, match=r"max_k must be <= the number of experts \(8\), got 9"):
        bh_select(P, 0.05, max_k=9)
    with pytest.raises(ValueError, match=r"max_k must be <= the number of experts \(8\), got 9"):
        BH(0.05, max_k=9).route(Z)
    with pytest.raises(ValueError, match=r"k must be <= the number of experts \(8\), got 9"):
        TopK(9).route(Z)


def test_min_k_negative():
    with pytest.raises(ValueError, match="min_k must be >= 0, got -1"):
        bh_select(P, 0.05, min_k=-1)
    with pytest.raises(ValueError, match="min_k must be >= 0, got -1"):
        TopP(0.5, min_k=-1)


def test_k_not_int():
    with pytest.raises(TypeError, match="min_k must be an int, got float"):
        bh_select(P, 0.05, min_k=1.0)


@pytest.mark.parametrize("t", [0.0, -1.0, float("inf")])
def test_temperature_not_positive(t):
    with pytest.raises(ValueError, match="temperature must be > 0 and finite, got"):
        BH(0.05, temperature=t)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_in_logits_and_pvalues(bad):
    z = Z.clone()
    z[1, 2] = bad
    with pytest.raises(ValueError, match="logits must be finite, got NaN or inf"):
        BH(0.05).route(z)
    with pytest.raises(ValueError, match="logits must be finite, got NaN or inf"):
        empirical_null_pvalues(z)
    p = P.clone()
    p[0, 0] = bad
    with pytest.raises(ValueError, match="p_values must be finite, got NaN or inf"):
        bh_select(p, 0.05)


@pytest.mark.parametrize("bad", [-0.1, 1.2])
def test_pvalues_outside_unit_interval(bad):
    p = P.clone()
    p[2, 3] = bad
    with pytest.raises(ValueError, match=r"p_values must be in \[0, 1\], got"):
        bh_select(p, 0.05)
    with pytest.raises(ValueError, match=r"p_values must be in \[0, 1\], got"):
        bh_adjust(p)


def test_wrong_shapes():
    with pytest.raises(ValueError, match=r"logits must have shape \(T, E\), got shape \(2, 3, 8\)"):
        TopK(2).route(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="p_values must have at least one dimension"):
        bh_select(torch.tensor(0.5), 0.05)


def test_wrong_dtypes():
    with pytest.raises(TypeError, match="p_values must have a floating dtype, got torch.int64"):
        bh_select(torch.zeros(3, 4, dtype=torch.long), 0.05)
    with pytest.raises(TypeError, match="logits must have a floating dtype"):
        BH().route(torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="p_values must be a torch.Tensor, got list"):
        bh_select([0.1, 0.2], 0.05)


def test_empty_input():
    with pytest.raises(ValueError, match=r"p_values must not be empty, got shape \(3, 0\)"):
        bh_select(torch.zeros(3, 0), 0.05)
    with pytest.raises(ValueError, match=r"logits must not be empty, got shape \(0, 0\)"):
        BH().route(torch.zeros(0, 0))


def test_zero_tokens_is_fine():
    r = BH().route(torch.zeros(0, 8), model_top_k=2)
    assert r.indices.shape == (0, 2) and r.counts.shape == (0,)


def test_strategy_parameters():
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\], got 1.5"):
        TopP(1.5)
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\], got 0"):
        WeightRatio(0)
    with pytest.raises(ValueError, match="weight_rule must be one of"):
        TopK(2, weight_rule="sum")
    with pytest.raises(ValueError, match="pvalues must be one of"):
        BH(pvalues="softmax")
    with pytest.raises(ValueError, match="pvalues='calibrated' needs a calibration"):
        BH(pvalues="calibrated")
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        TopK(0)
    with pytest.raises(ValueError, match="max_k must be >= 1, got 0"):
        TopP(0.5, max_k=0)
