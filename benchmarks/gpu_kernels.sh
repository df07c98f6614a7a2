#!/usr/bin/env bash
# Issue 6 on one GPU: the gpu-marked kernel tests, then both kernel benchmarks; logs and results in $OUT.
#
#   bash benchmarks/gpu_kernels.sh        # from the repo root on the GPU machine, about 6-8 min on one H100
#
# The GPU machine has no internet: liger-kernel and cut-cross-entropy (and pytest, if missing) install
# from the wheels in .whl/, which git ignores, so the device tool must carry ".whl".
set -uo pipefail
OUT=${OUT:-$PWD/gpu-kernels-out}
mkdir -p "$OUT"

wheels=(.whl/liger_kernel-*.whl .whl/cut_cross_entropy-*.whl)
python3 -c "import pytest" 2>/dev/null || wheels+=(.whl/pytest-*.whl .whl/pluggy-*.whl .whl/iniconfig-*.whl
                                                   .whl/pygments-*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "${wheels[@]}"
export PYTHONPATH=/tmp/site:$PWD/src

{
    nvidia-smi
    python3 -c "import sys, torch, triton; print(sys.version, torch.__version__, torch.version.cuda, triton.__version__)"
} > "$OUT/env.txt" 2>&1

status=0
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_chunked_ce_gpu.py \
    tests/ops/test_tiled_mlp_gpu.py 2>&1 | tee "$OUT/gpu-tests.log" || status=1
# each benchmark stops starting new shapes after --budget-s and rewrites its results after every shape
timeout 290 python3 benchmarks/kernels_ce.py --budget-s 190 2>&1 | tee "$OUT/kernels-ce.log" || status=1
timeout 140 python3 benchmarks/kernels_tiled_mlp.py --budget-s 70 2>&1 | tee "$OUT/kernels-tiled-mlp.log" \
    || status=1
exit $status
