#!/usr/bin/env bash
# One node, all its GPUs (or N CPU processes with gloo): bash torchrun_configs/single_node.sh RECIPE [k=v ...]
# CPTRAIN_PYTHON: the interpreter that has cptrain installed (default .venv/bin/python); it both counts
# the GPUs and trains, so the script works without activating the venv.
# Stopping: SIGTERM or SIGUSR1 to torchrun is forwarded to the trainers, which save a checkpoint and exit;
# torchrun waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default here 300; torchrun's own 30) before it
# SIGKILLs them, which must cover the step in progress, one or two more and the save.
set -euo pipefail
PY=${CPTRAIN_PYTHON:-.venv/bin/python}
if ! command -v "$PY" >/dev/null; then
  echo "single_node.sh: no python at '$PY'; run from the repository or set CPTRAIN_PYTHON" >&2
  exit 2
fi
for arg in "$@"; do  # the recipe: the first argument that is not a flag (cptrain run takes --dry-run anywhere)
  if [[ $arg != -* ]]; then
    if [[ ! -f $arg ]]; then
      echo "single_node.sh: recipe '$arg' not found (relative to $PWD); usage: $0 RECIPE.toml [key=value ...]" >&2
      exit 2
    fi
    break
  fi
done
# every key, type and value of the recipe and overrides checked once, before torchrun (a fraction of a second,
# no torch): a mistake is one line here, not one per rank inside torchrun's failure report
"$PY" -m cptrain.cli run "$@" --dry-run >/dev/null
NPROC=${NPROC_PER_NODE:-$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# torchrun's default list lacks SIGUSR1: it would end torchrun alone and leave the trainers running unsignalled
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
  -m cptrain.cli run "$@"
