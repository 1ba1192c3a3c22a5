#!/usr/bin/env bash
# Create .venv and install bh-routing with its test tools. Idempotent: a second run is quick.
#
# torch: a CPU build is preferred (the package runs on CPU out of the box; a GPU machine such as
# Colab already has its own torch). Where a torch 2.13.0 CPU wheel lies in pip's find-links (as on
# the project's machines) it is taken from there; otherwise the PyTorch CPU wheel index is used,
# and plain PyPI as a last resort. Set BH_ROUTING_TORCH="torch==X.Y" to choose yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${BH_ROUTING_TORCH:-}" ]; then
    $VPIP install "$BH_ROUTING_TORCH"
  elif $VPIP install -q --no-deps --no-index torch==2.13.0 2>/dev/null; then
    $VPIP install -q torch==2.13.0  # the wheel came from local find-links; now its dependencies
  else
    $VPIP install torch --index-url https://download.pytorch.org/whl/cpu || $VPIP install torch
  fi
fi
$VPIP install -q -e ".[test]"
