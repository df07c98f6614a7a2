"""`cptrain run` under torchrun with 2 CPU processes (gloo): the launch path users take on a node."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes(tmp_path, smollm_tokenizer):
    smollm_tokenizer.save_pretrained(tmp_path / "tok")  # skip re-reading the GGUF in each rank
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cptrain.cli", "run", str(ROOT / "recipes" / "tiny-cpu.toml"), f"train.run_dir='{run_dir}'",
           f"model.tokenizer='{tmp_path / 'tok'}'", "train.steps=4", "checkpoint.every_steps=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(x == x for x in losses)
    step = run_dir / "checkpoints" / "step-4"
    assert (step / "COMMITTED").is_file() and (step / "rank-0.pt").is_file() and (step / "rank-1.pt").is_file()
    assert json.loads((step / "train_state.json").read_text())["world_size"] == 2
