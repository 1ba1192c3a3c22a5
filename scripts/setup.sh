#!/usr/bin/env bash
# Create .venv and install bh-routing with its test tools. Idempotent: a second run is quick.
#
#   bash scripts/setup.sh                 set up .venv
#   bash scripts/setup.sh --print-torch   print the torch requirement it would install, install nothing
#
# torch fits the machine. Where an NVIDIA GPU is present (`nvidia-smi -L` lists one) a CUDA build
# from the PyTorch CUDA 12.6 wheel index (runs with NVIDIA drivers >= 525, as on Colab); elsewhere a
# CPU build: where a torch 2.13.0 CPU wheel lies in pip's find-links (as on the project's machines)
# it is taken from there, otherwise the PyTorch CPU wheel index is used, and plain PyPI as a last
# resort. Set BH_ROUTING_TORCH to choose yourself: a requirement and pip options, e.g.
# BH_ROUTING_TORCH="torch==2.8.0 --index-url https://download.pytorch.org/whl/cu128".
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_INDEX=https://download.pytorch.org/whl/cu126
CPU_INDEX=https://download.pytorch.org/whl/cpu

has_nvidia_gpu() {  # nvidia-smi is on PATH, runs, and lists at least one GPU
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]'
}

torch_requirement() {  # one line: the requirement and pip options that would be installed
  if [ -n "${BH_ROUTING_TORCH:-}" ]; then
    echo "$BH_ROUTING_TORCH"
  elif has_nvidia_gpu; then
    echo "torch --index-url $CUDA_INDEX"
  else
    echo "torch --index-url $CPU_INDEX"
  fi
}

case "${1:-}" in
  --print-torch) torch_requirement; exit 0 ;;
  "") ;;
  *) echo "error: usage: bash scripts/setup.sh [--print-torch]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  req=$(torch_requirement)
  echo "setup: installing $req"
  if [ -n "${BH_ROUTING_TORCH:-}" ] || has_nvidia_gpu; then
    # shellcheck disable=SC2086  # the requirement may carry pip options
    $VPIP install $req
  elif $VPIP install -q --no-deps --no-index torch==2.13.0 2>/dev/null; then
    $VPIP install -q torch==2.13.0  # the wheel came from local find-links; now its dependencies
  else
    $VPIP install torch --index-url "$CPU_INDEX" || $VPIP install torch
  fi
fi
$VPIP install -q -e ".[test]"
