#!/usr/bin/env bash
# One node, all its GPUs (or N CPU processes with gloo): bash torchrun_configs/single_node.sh RECIPE [k=v ...]
# CPTRAIN_PYTHON: the interpreter that has cptrain installed (default .venv/bin/python); it both counts
# the GPUs and trains, so the script works without activating the venv.
set -euo pipefail
PY=${CPTRAIN_PYTHON:-.venv/bin/python}
if ! command -v "$PY" >/dev/null; then
  echo "single_node.sh: no python at '$PY'; run from the repository or set CPTRAIN_PYTHON" >&2
  exit 2
fi
NPROC=${NPROC_PER_NODE:-$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
  -m cptrain.cli run "$@"
