"""Host syncs and torch ops per MoE layer of the patch, counted (not timed) at a batch-1 decode step.

Each sync is a full device synchronisation on a GPU and each op a kernel launch; these counts
are what made the patch cost +41 % per decode step on an H100 (BENCHMARKS-gpu.md). They are
pinned here so that they cannot grow unnoticed. CPU counts: the CPU fast paths of BH take a
few host reads that the GPU paths do not (see benchmarks/bench_overhead.py).
"""

import copy
import warnings

import pytest
import torch

import bench_overhead as bo
from bh_routing import BH, TopK
from bh_routing.models import load_model, patched


@pytest.fixture(scope="module")
def decode_counts():
    """name -> OpCounter of one decode step (batch 1, KV cache) of the embedded model, grouped_mm."""
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    model, _ = load_model(None, device="cpu", dtype="float32")
    model.set_experts_implementation("grouped_mm")
    layers = model.config.num_hidden_layers
    counts = {}
    for name, spec in {"unpatched": None, "topk": (TopK(8), "patch"), "bh": (BH(0.05), "patch"),
                       "analyze": (BH(0.05), "analyze")}.items():
        m = copy.deepcopy(model)
        with patched(m, *spec) if spec else torch.no_grad():
            work = bo.Workload(m, "decode", m.config.vocab_size, "cpu")
            work.step()
            counts[name] = bo.count(work.step)
    return counts, layers


def test_the_counter_sees_syncs_and_ops():
    x = torch.arange(6.0)
    c = bo.count(lambda: (bool(x.sum() > 0), int(x[0]), x.nonzero(), x[x > 2], x.tolist()))
    assert c.sync_names == {"_local_scalar_dense": 2, "nonzero": 1, "index": 1}
    assert c.ops > c.syncs


def test_unpatched_decode_has_no_sync(decode_counts):
    counts, _ = decode_counts
    assert counts["unpatched"].syncs == 0


def test_patched_topk_at_the_models_k_adds_no_sync_and_few_ops(decode_counts):
    """The router's own output is TopK(8)'s choice: no second routing, no host read of the pairs."""
    counts, layers = decode_counts
    c, base = counts["topk"], counts["unpatched"]
    assert c.syncs == 0
    assert (c.kernels - base.kernels) / layers <= 2  # the recorder's index_add_ of the chosen experts


def test_patched_bh_syncs_per_layer(decode_counts):
    """BH(0.05), empirical null, on the CPU: 3 host reads per layer, 2 of them on a GPU.

    The logits' finiteness check (Strategy.route), the MAD-zero check of the CPU path
    (``neg_zscores``; none on a GPU) and the ``nonzero`` that compacts the real pairs.
    """
    counts, layers = decode_counts
    c = counts["bh"]
    assert c.syncs == 3 * layers
    assert c.sync_names == {"_local_scalar_dense": 2 * layers, "nonzero": layers}


def test_analyze_bh_syncs_per_layer(decode_counts):
    """Analyze mode: the finiteness check and the CPU MAD-zero check; nothing is compacted."""
    counts, layers = decode_counts
    assert counts["analyze"].syncs == 2 * layers


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_syncs_per_layer_as_cuda_reports_them():
    """On a GPU, CUDA's own count (set_sync_debug_mode): TopK(8) adds none, BH(0.05) at most two per
    layer (the logits' finiteness check and the compaction's nonzero); the CPU-only reads are gone.
    (Measured on an H100: TopK(8) one sync per decode step *fewer* than the unpatched model - the
    compacting wrapper skips one of the experts module's own - and BH 1.75 per layer.)"""
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    model, _ = load_model(None, device="cuda:0", dtype="float32")
    model.set_experts_implementation("grouped_mm")
    layers = model.config.num_hidden_layers
    got = {}
    for name, spec in {"unpatched": None, "topk": (TopK(8), "patch"), "bh": (BH(0.05), "patch")}.items():
        m = copy.deepcopy(model)
        with patched(m, *spec) if spec else torch.no_grad():
            work = bo.Workload(m, "decode", m.config.vocab_size, "cuda:0")
            work.step()
            got[name] = bo.count(work.step)
    base = got["unpatched"]
    assert got["topk"].cuda_syncs <= base.cuda_syncs and got["topk"].syncs == base.syncs
    assert 0 < got["bh"].cuda_syncs - base.cuda_syncs <= 2 * layers
    assert got["bh"].syncs - base.syncs == 2 * layers
