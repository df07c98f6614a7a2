"""Peer: torchtitan 0.2.2 through torchrun and torchtitan_launch.py; tokens/s read from its log lines.

Data: a jsonl of Python stdlib sources through torchtitan's `c4_test` loader (datasets' json builder);
tokenizer: the SmolLM2 tokenizer (49152 ids) shipped in benchmarks/assets/. The model keeps its
128256-row vocabulary; every id the tokenizer makes is below 49152, so only the embedding rows that
are used differ, and the FLOPs do not.
One GPU: torchtitan keeps fp32 weights and runs bf16 autocast (its single-device path). Several
GPUs: FSDP2 over all of them with bf16 params and fp32 reduction (its defaults).
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH = Path(__file__).resolve().parent / "torchtitan_launch.py"
TOKENIZER_DIR = REPO / "benchmarks" / "assets" / "smollm2-tokenizer"
FLAVORS = {"llama3.2-1b": "1B", "llama3.1-8b": "8B"}

# "step:  3  loss: 11.2  grad_norm: 1.2  memory: 12.34GiB(15.6%)  tps: 41,234  tflops: ...  mfu: 30.1%"
_STEP = re.compile(r"step:\s*(\d+)\s+loss:.*?memory:\s*([\d.]+)GiB.*?tps:\s*([\d,]+).*?mfu:\s*([\d.]+)%")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def command(shape: str, n_gpus: int, ac: str, compile: bool, steps: int, seq_len: int, data_dir: Path,
            dump_dir: Path) -> list[str]:
    """torchrun command line; `ac` is torchtitan's activation_checkpoint.mode: none | selective | full."""
    if shape not in FLAVORS:
        raise ValueError(f"torchtitan peer: no flavor for shape {shape!r}; known: {', '.join(FLAVORS)}")
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpus}",
        "--local-ranks-filter", "0", "--role", "rank", "--tee", "3", str(LAUNCH),
        "--model.name", "llama3", "--model.flavor", FLAVORS[shape],
        "--model.hf_assets_path", str(TOKENIZER_DIR),
        "--training.dataset", "c4_test", "--training.dataset_path", str(data_dir),
        "--training.seq_len", str(seq_len), "--training.local_batch_size", "1",
        "--training.steps", str(steps), "--lr_scheduler.warmup_steps", "1",
        "--parallelism.data_parallel_shard_degree", "-1",
        "--activation_checkpoint.mode", ac, "--compile.enable" if compile else "--compile.no-enable",
        "--metrics.log_freq", "1", "--metrics.disable_color_printing",
        "--job.dump_folder", str(dump_dir),
    ]


def parse_log(text: str, warmup: int) -> dict:
    """Median per-GPU tokens/s over logged steps after `warmup`, and the peak reserved memory."""
    rows = [m.groups() for m in _STEP.finditer(_ANSI.sub("", text))]
    timed = [(int(s), float(mem), float(tps.replace(",", "")), float(mfu)) for s, mem, tps, mfu in rows
             if int(s) > warmup]
    if not timed:
        return {"status": "error", "error": f"no torchtitan step lines after step {warmup} in the log"}
    tps = statistics.median(t[2] for t in timed)
    return {"status": "ok", "tokens_per_s_per_gpu": tps, "peak_mem_gib": max(t[1] for t in timed),
            "torchtitan_mfu": statistics.median(t[3] for t in timed) / 100, "steps_timed": len(timed)}
