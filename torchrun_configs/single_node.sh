#!/usr/bin/env bash
# One node, all its GPUs (or N CPU processes with gloo): bash torchrun_configs/single_node.sh RECIPE [k=v ...]
# CPTRAIN_PYTHON: the interpreter that has cptrain installed (default .venv/bin/python); it both counts
# the GPUs and trains, so the script works without activating the venv.
# Stopping: SIGTERM or SIGUSR1 to this script goes straight to the trainers (torchrun's children), which save a
# checkpoint and exit; torchrun then ends as they did (0) and so does the script. Sent to torchrun itself, it is
# forwarded too, but torchrun SIGKILLs the trainers after TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (set to 300 here)
# and torch < 2.13 ignores that variable: 30 s, less than a 1B model's save took on one H100.
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
# job control on: torchrun gets a process group of its own, so a signal to this script's group (Ctrl-C, `kill -TERM
# -PGID`, a closed terminal) reaches the trainers only through the traps below, not through torchrun as well
set -m
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m cptrain.cli run "$@" &
pid=$!
to_trainers() { pkill "-$1" -P "$pid" || true; }
trap 'to_trainers USR1' USR1
trap 'to_trainers TERM' TERM HUP
interrupted=0
trap 'interrupted=1; to_trainers INT' INT
set +e
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done  # a trapped signal ends a wait early: wait again
wait "$pid"  # torchrun's exit status (bash keeps it after the loop's wait collected it)
status=$?
[[ $interrupted == 1 ]] && exit 130  # Ctrl-C: as the trainers exit (torchrun calls their 130 a failure)
exit $status
