"""The statistics core must not import transformers (checked in a fresh interpreter)."""

import subprocess
import sys


def test_core_does_not_import_transformers():
    code = (
        "import sys, torch, bh_routing, bh_routing.core\n"
        "r = bh_routing.BH(0.05).route(torch.randn(4, 8))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'matplotlib')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
