"""Sequential calibration in a simulated multi-layer router: null rejection rates back at nominal.

A toy MoE stack (torch only): token states h (T, d); layer l's router logits z = h W_l^T; the
chosen experts move the state, h <- h + sum_{e chosen} pi_e U_l[e], so routing fewer experts in
layer l changes the logits that reach layer l + 1. The per-layer null rejection rate is
P(p_e <= a | e not in the top-k of that layer's logits) on fresh tokens routed by BH.

Tolerance: the rate is an average of E per-expert conditional rates, each off by the calibration
draw (sd sqrt(a(1-a)/n_e)), plus the binomial error of the test pairs; se combines the two and a
valid calibration must land within 4 se of a. The ordinary (top-k) calibration must miss by more
than that at some layer >= 1 - otherwise the simulation would not test anything.
"""

import numpy as np
import torch

from bh_routing.core import BH, CalibrationBuilder, TopK
from bh_routing.core.sequential import empty_calibration, fit_sequential, with_layer

E, K, D, L = 16, 4, 6, 3
ALPHA = 0.1


def _stack(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(L, E, D, generator=g)  # router weights
    u = 8.0 * torch.randn(L, E, D, generator=g)  # each expert's push on the state
    return w, u


def _run(stack, h, strategies, upto):
    """Logits reaching layer ``upto`` when layers < upto are routed by ``strategies[l]``."""
    w, u = stack
    for layer in range(upto):
        z = h @ w[layer].T  # (T, E)
        r = strategies[layer].route(z, layer=layer, model_top_k=K)
        used = r.indices < E  # (T, W)
        push = u[layer][r.indices.clamp(max=E - 1)] * (r.weights * used).unsqueeze(-1)  # (T, W, D)
        h = h + push.sum(dim=1)
    return h @ w[upto].T  # (T, E)


def _tokens(seed, n):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _null_rates(stack, cal, h, levels):
    bh = BH(ALPHA, pvalues="calibrated", calibration=cal, min_k=1, max_k=K)
    out = []
    for layer in range(L):
        z = _run(stack, h, [bh] * L, layer)  # (T, E)
        p = cal.pvalues(z, layer)  # (T, E)
        null = torch.ones_like(z, dtype=torch.bool).scatter(1, z.topk(K, dim=1).indices, False)  # (T, E)
        out.append([float((p[null] <= a).double().mean()) for a in levels] + [int(null.sum())])
    return out


def _se(a, n_test, n_cal):
    return np.sqrt(a * (1 - a) / n_test + a * (1 - a) / (E * n_cal))


def test_sequential_calibration_brings_null_rejection_back_to_nominal():
    stack = _stack(0)
    calib, test = _tokens(1, 6000), _tokens(2, 6000)
    fit = dict(num_experts=E, top_k=K, null="unrouted", reservoir_size=8192, model_name="toy", model_fingerprint="toy")

    # ordinary calibration: every layer recorded under the model's own top-k routing
    ordinary = empty_calibration(num_layers=L, **fit)
    for layer in range(L):
        b = CalibrationBuilder(num_layers=1, num_experts=E, top_k=K, reservoir_size=8192, seed=layer)
        b.update(0, _run(stack, calib, [TopK(K)] * L, layer))
        ordinary = with_layer(ordinary, layer, b.finalize(model_name="toy", model_fingerprint="toy"))

    def logits_at(layer, cal):
        bh = BH(ALPHA, pvalues="calibrated", calibration=cal, min_k=1, max_k=K)
        for chunk in calib.split(1500):  # streamed in chunks, as a text would be
            yield _run(stack, chunk, [bh] * L, layer)

    sequential = fit_sequential(logits_at, num_layers=L, seed=0, **fit)
    assert torch.equal(sequential.null_count.sum(dim=1), torch.full((L,), 6000 * (E - K)))
    n_cal = 6000 * (E - K) / E
    levels = (0.01, 0.05)
    seq_rates = _null_rates(stack, sequential, test, levels)
    ord_rates = _null_rates(stack, ordinary, test, levels)
    missed = False
    for layer in range(L):
        n_test = seq_rates[layer][-1]
        for i, a in enumerate(levels):
            se = _se(a, n_test, n_cal)
            assert abs(seq_rates[layer][i] - a) <= 4 * se, (layer, a, seq_rates[layer][i])
            if layer == 0:  # no routing below: both calibrations see the same distribution
                assert abs(ord_rates[layer][i] - a) <= 4 * se
            missed |= abs(ord_rates[layer][i] - a) > 4 * se
    assert missed, ord_rates  # the simulation does shift the later layers' nulls


def test_fit_sequential_hands_each_layer_the_final_nulls_below():
    seen = []

    def logits_at(layer, cal):
        seen.append((layer, cal.null_count.sum(dim=1).tolist()))
        yield torch.randn(50, E, generator=torch.Generator().manual_seed(layer))

    cal = fit_sequential(
        logits_at, num_layers=L, num_experts=E, top_k=K, reservoir_size=64, pooled_size=1024, model_name="m",
        model_fingerprint="f",
    )
    filled = 50 * (E - K)
    assert seen == [(0, [0, 0, 0]), (1, [filled, 0, 0]), (2, [filled, filled, 0])]
    assert cal.null_count.sum().item() == L * filled and cal.num_tokens == 50
    assert cal.std_count.tolist() == [filled] * L  # the pooled standardised null is fitted per layer too
    assert cal.standardized_pvalues(torch.randn(5, E), L - 1).shape == (5, E)
    # an empty layer gives p = 1 everywhere
    empty = empty_calibration(
        num_layers=1, num_experts=E, top_k=K, null="unrouted", reservoir_size=8, model_name="m", model_fingerprint="f"
    )
    assert torch.equal(empty.pvalues(torch.randn(5, E), 0), torch.ones(5, E))
