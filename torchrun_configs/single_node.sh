#!/usr/bin/env bash
# One node, all its GPUs (or N CPU processes with gloo): bash torchrun_configs/single_node.sh RECIPE [k=v ...]
set -euo pipefail
NPROC=${NPROC_PER_NODE:-$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${CPTRAIN_PYTHON:-.venv/bin/python}" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
  -m cptrain.cli run "$@"
