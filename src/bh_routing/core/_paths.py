"""Which implementation a routing step takes: a CPU fast path (numpy, numba, host reads) or the static one.

The core's CPU fast paths (numpy sorts and selections, :mod:`bh_routing.core.bh`,
:mod:`~bh_routing.core.pvalues`, :mod:`~bh_routing.core.router_count`, and the per-token loops
compiled by numba in :mod:`~bh_routing.core._kernels`) run only on CPU tensors,
outside ``torch.compile`` and without autograd: there the data is already on the host and
numpy's SIMD sorts are several times faster than torch's on short rows. Everywhere else (a GPU,
a compiled graph, a CUDA graph) the static path runs: torch ops of fixed output shapes that
read nothing back to the host. Both give the same bits (tests/core compare them).

``HOST_FAST_PATHS = False`` forces the static path on the CPU too: the tests count its host
syncs there (tests/benchmarks/test_bench_overhead.py), which is the GPU's count.
"""

from __future__ import annotations

import torch

HOST_FAST_PATHS = True


def host_fast(t: torch.Tensor) -> bool:
    """Whether the CPU fast path may run on ``t`` (see the module notes)."""
    return (
        HOST_FAST_PATHS
        and t.device.type == "cpu"
        and not t.requires_grad
        and not torch.compiler.is_compiling()
    )


def compiling() -> bool:
    """Whether the code runs inside a ``torch.compile`` trace (caches are bypassed there)."""
    return torch.compiler.is_compiling()
