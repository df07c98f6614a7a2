#!/usr/bin/env bash
# Throughput question 1 or 2 on the GPU machine: install the carried wheels (.whl/: liger-kernel,
# torchtitan 0.2.2 and what they need that the image lacks), run benchmarks/throughput.py, and leave
# the .md, .json and the run log in $OUT.
#   benchmarks/gpu_throughput.sh 1            # 1 GPU, llama3.2-1b, ~9 min
#   benchmarks/gpu_throughput.sh 2            # all GPUs, llama3.1-8b, ~9.5 min
#   benchmarks/gpu_throughput.sh 1 --peers hf,cptrain --steps 10   # extra args go to throughput.py
set -euo pipefail
Q=${1:?usage: benchmarks/gpu_throughput.sh 1|2 [throughput.py args...]}
shift
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# NVLink multicast stays off on shared hosts (KINDS.md), also for every process torchrun starts
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
python3 -m pip list 2>/dev/null | grep -i -E "^(torch|triton|transformers|liger.kernel|torchtitan|datasets|pyarrow|huggingface.hub|fsspec|tyro|torchdata) " || true

python3 benchmarks/throughput.py --question "$Q" "$@"
