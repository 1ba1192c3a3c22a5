"""The versions and machine a result was computed with (recorded in results files and certificates)."""

from __future__ import annotations


def environment() -> dict:
    """Versions and machine of a run (recorded in every results file and certificate)."""
    import platform

    import numpy as np
    import scipy
    import torch
    import transformers

    from .. import __version__

    return {
        "bh_routing": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
