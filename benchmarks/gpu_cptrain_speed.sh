#!/usr/bin/env bash
# cptrain variant against variant on one GPU (benchmarks/cptrain_speed.py); results and logs in $OUT.
#   bash benchmarks/gpu_cptrain_speed.sh [cptrain_speed.py args...]     # ~6.5 min on one H100
# Needs .bench-base/src (the code to compare against: git archive REV src | tar -x -C .bench-base) and
# .whl/tomli_w-*.whl (the image lacks tomli_w): the device tool must carry ".whl" and ".bench-base".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/tomli_w-*.whl
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv,noheader || true
python3 benchmarks/cptrain_speed.py --base-src .bench-base/src "$@"
