"""cptrain's own row: `cptrain run RECIPE` as a subprocess (torchrun for several GPUs), read back from
RUN_DIR/metrics.jsonl (keys step, tokens_per_s, tokens_per_s_per_gpu, mfu, peak_mem_gib,
data_wait_frac) and RUN_DIR/config.resolved.toml (which setting actually ran).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import tomllib


def command(recipe: Path, run_dir: Path, steps: int, n_gpus: int, overrides: list[str]) -> list[str]:
    """The cptrain command line: every run gets a fresh run_dir, its step count and no final checkpoint."""
    launcher = [sys.executable]
    if n_gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpus}"]
    return [*launcher, "-m", "cptrain.cli", "run", str(recipe), f"train.run_dir={run_dir}",
            f"train.steps={steps}", "checkpoint.save_final=false", *overrides]


def setting_of(run_dir: Path) -> dict:
    """The knobs that matter for the table, from the resolved config the run wrote."""
    path = run_dir / "config.resolved.toml"
    if not path.exists():
        return {}
    cfg = tomllib.loads(path.read_text())
    model, train = cfg.get("model", {}), cfg.get("train", {})
    summary = run_dir / "report" / "summary.json"
    resolved = json.loads(summary.read_text()) if summary.exists() else {}
    return {k: v for k, v in {
        "activation_checkpointing": model.get("activation_checkpointing"), "compile": model.get("compile"),
        "attention": model.get("attention"), "loss": model.get("loss"), "tiled_mlp": model.get("tiled_mlp"),
        "seq_len": train.get("seq_len"), "micro_batch_size": train.get("micro_batch_size"),
        "fp8": cfg.get("precision", {}).get("fp8"),
        "reshard_after_forward": cfg.get("parallel", {}).get("reshard_after_forward"),
        "reduce_dtype": cfg.get("precision", {}).get("reduce_dtype"),
        "master_dtype": cfg.get("precision", {}).get("master_dtype"),
        "long_doc_min_tokens": model.get("long_doc_min_tokens"),
        "attention_path": resolved.get("attention"), "optimizer": resolved.get("optimizer"),
    }.items() if v is not None}


def describe(setting: dict) -> str:
    """A short label, e.g. 'AC full, compile, attn flex, loss fused_chunked'."""
    parts = [f"AC {setting.get('activation_checkpointing', '?')}",
             "compile" if setting.get("compile") else "no compile",
             f"attn {setting.get('attention', '?')}", f"loss {setting.get('loss', '?')}"]
    if setting.get("tiled_mlp", "off") != "off":
        parts.append(f"tiled MLP {setting['tiled_mlp']}")
    if setting.get("fp8"):
        parts.append("FP8")
    if setting.get("reshard_after_forward") is False:
        parts.append("no reshard after forward")
    if setting.get("reduce_dtype") == "bf16":
        parts.append("bf16 reduce-scatter")
    if setting.get("long_doc_min_tokens", 0) > 0:
        parts.append(f"hybrid attention for documents >= {setting['long_doc_min_tokens']} tokens")
    if setting.get("master_dtype") == "bf16":
        parts.append("bf16 weights + AdamW states")
    if setting.get("attention_path", "").startswith("varlen (FlashAttention 4)"):
        parts.append("FlashAttention 4 varlen")
    if setting.get("optimizer"):
        parts.append(setting["optimizer"])
    return ", ".join(parts)


def parse_metrics(run_dir: Path, warmup: int) -> dict:
    """Medians over the logged steps after `warmup`; the largest peak memory."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {"status": "error", "error": f"{path} was not written"}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    timed = [r for r in records if "tokens_per_s" in r and r.get("step", 0) > warmup]
    if not timed:
        return {"status": "error", "error": f"no step after {warmup} in {path}"}

    def med(key: str) -> float | None:
        values = [r[key] for r in timed if isinstance(r.get(key), (int, float))]
        return statistics.median(values) if values else None

    peaks = [r["peak_mem_gib"] for r in timed if isinstance(r.get("peak_mem_gib"), (int, float))]
    return {"status": "ok", "tokens_per_s": med("tokens_per_s"),
            "tokens_per_s_per_gpu": med("tokens_per_s_per_gpu"), "mfu": med("mfu"),
            "data_wait_frac": med("data_wait_frac"), "peak_mem_gib": max(peaks, default=None),
            "steps_timed": len(timed), "last_loss": timed[-1].get("loss")}
