"""Host syncs and torch ops per MoE layer of the patch, counted (not timed) at a batch-1 decode step.

Each sync is a full device synchronisation on a GPU and each op a kernel launch; these counts
made the patch cost +12 to +41 % per decode step on an H100 (BENCHMARKS-gpu.md). The patch path
is static now: 0 host syncs per layer for every strategy on grouped_mm, pinned here twice - with
the core's CPU fast paths (numpy on host data) and with them off (``core._paths``), which is the
torch path a GPU and a compiled graph run.
"""

import copy
import warnings

import pytest
import torch

import bench_overhead as bo
from bh_routing.core import _paths
from bh_routing.models import load_model, patched


@pytest.fixture(scope="module")
def embedded():
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    model, tokenizer = load_model(None, device="cpu", dtype="float32")
    model.set_experts_implementation("grouped_mm")
    return model, bo.calibration_for(model, tokenizer, "cpu")


def _decode_counts(model, calibration, *, host_fast: bool):
    """name -> OpCounter of one decode step (batch 1, KV cache) of the embedded model, grouped_mm."""
    counts = {}
    saved = _paths.HOST_FAST_PATHS
    _paths.HOST_FAST_PATHS = host_fast
    try:
        for name, spec in bo.variants(calibration).items():
            m = copy.deepcopy(model)
            with patched(m, *spec[1:]) if spec else torch.no_grad():
                work = bo.Workload(m, "decode", m.config.vocab_size, "cpu")
                work.step()
                counts[name] = bo.count(work.step)
    finally:
        _paths.HOST_FAST_PATHS = saved
    return counts


@pytest.fixture(scope="module")
def decode_counts(embedded):
    model, calibration = embedded
    return _decode_counts(model, calibration, host_fast=True), model.config.num_hidden_layers


def test_the_counter_sees_syncs_and_ops():
    x = torch.arange(6.0)
    c = bo.count(lambda: (bool(x.sum() > 0), int(x[0]), x.nonzero(), x[x > 2], x.tolist()))
    assert c.sync_names == {"_local_scalar_dense": 2, "nonzero": 1, "index": 1}
    assert c.ops > c.syncs


def test_every_strategy_and_family_is_counted(decode_counts):
    counts, _ = decode_counts
    names = " ".join(counts)
    for family in ("TopK", "TopP", "WeightRatio", "BH(0.05) empirical", "calibrated", "standardized", "Entropy", "analyze"):
        assert family in names
    assert sum("router" in n for n in counts) == 3  # each p-value method with router selection


def test_unpatched_decode_has_no_sync(decode_counts):
    counts, _ = decode_counts
    assert counts["unpatched"].syncs == 0


def test_no_strategy_adds_a_sync_on_grouped_mm(decode_counts):
    """0 host syncs per MoE layer in patch mode (and analyze) for every strategy, CPU fast paths on."""
    counts, _ = decode_counts
    assert {name: c.syncs for name, c in counts.items()} == {name: 0 for name in counts}


def test_no_strategy_adds_a_sync_on_the_static_torch_path(embedded):
    """The same with the CPU fast paths off: the ops a GPU and a compiled graph run. BH's routing
    then runs torch ops only (no numpy), and still reads nothing back."""
    model, calibration = embedded
    counts = _decode_counts(model, calibration, host_fast=False)
    assert {name: c.syncs for name, c in counts.items()} == {name: 0 for name in counts}
    assert all(c.numpy == 0 for c in counts.values())
    bh = counts["patch BH(0.05) empirical"]
    assert bh.names["sort"] > 0 and bh.names["_local_scalar_dense"] == 0


def test_patched_topk_at_the_models_k_adds_few_ops(decode_counts):
    """The router's own output is TopK(8)'s choice: no second routing; recording is two kernels."""
    counts, layers = decode_counts
    c, base = counts["patch TopK(8)"], counts["unpatched"]
    assert (c.kernels - base.kernels) / layers <= 2  # index_add_ of the chosen experts, one add of the counts


def test_variable_k_experts_compute_by_offsets_not_by_compaction(decode_counts):
    """The variable-k experts call sorts the slots and finds offsets on the device (searchsorted),
    with no nonzero and no boolean index."""
    counts, layers = decode_counts
    c = counts["patch BH(0.05) empirical"]
    assert c.names["searchsorted"] >= layers and c.names["nonzero"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_syncs_per_layer_as_cuda_reports_them():
    """On a GPU, CUDA's own count (set_sync_debug_mode): no strategy adds a synchronisation."""
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    model, tokenizer = load_model(None, device="cuda:0", dtype="float32")
    model.set_experts_implementation("grouped_mm")
    got = {}
    for name, spec in bo.variants(bo.calibration_for(model, tokenizer, "cuda:0")).items():
        m = copy.deepcopy(model)
        with patched(m, *spec[1:]) if spec else torch.no_grad():
            work = bo.Workload(m, "decode", m.config.vocab_size, "cuda:0")
            work.step()
            got[name] = bo.count(work.step)
    base = got["unpatched"]
    for name, c in got.items():
        assert c.syncs == 0, name
        assert c.cuda_syncs <= base.cuda_syncs, name
