"""The run folder: the same layout on one CPU and on many GPUs.

  config.resolved.toml  model_args.json  tokenizer/  metrics.jsonl  checkpoints/step-N/
  samples/  report/summary.json  report/data.json  hf/ (when train.export_hf)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.distributed as dist

from cptrain import checkpoint
from cptrain.config import Config
from cptrain.configtools import ConfigError
from cptrain.flops import peak_bf16_flops, training_flops
from cptrain.metrics import json_safe, peak_memory_gib
from cptrain.models.decoder import IGNORE_INDEX
from cptrain.models.presets import ModelArgs

# ModelArgs fields that decide which tensors a checkpoint holds and their shapes
SHAPE_FIELDS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "tie_embeddings",
                "qkv_bias", "qk_norm")


class RunFolder:
    def __init__(self, path: Path, is_main: bool):
        self.path = path
        self.is_main = is_main

    def create(self, fresh: bool) -> None:
        """Make the folder's layout. A fresh start keeps an earlier run's metrics.jsonl and config.resolved.toml
        under new names (metrics.prev-N.jsonl, config.resolved.prev-N.toml) instead of appending to or
        overwriting them; a resumed run appends."""
        if self.is_main:
            for sub in ("checkpoints", "samples", "report"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            old = self.path / "metrics.jsonl"
            if fresh and old.is_file() and old.stat().st_size:
                n = 1
                while (self.path / f"metrics.prev-{n}.jsonl").exists():
                    n += 1
                old.rename(self.path / f"metrics.prev-{n}.jsonl")
                config = self.path / "config.resolved.toml"
                if config.is_file():  # the settings those metrics came from, beside them
                    config.rename(self.path / f"config.resolved.prev-{n}.toml")
        dist.barrier()

    def check_fits(self, step_dir: Path, args: ModelArgs) -> None:
        """Refuse a checkpoint whose run was built with other model settings, naming them, before DCP fails on
        its first missing tensor. The model_args.json beside the checkpoint's run folder says how it was built;
        only the fields that set tensor names and shapes count (RoPE settings may change, e.g. for a longer
        context)."""
        saved = step_dir.parent.parent / "model_args.json"
        if not saved.is_file():
            return
        before, now = json.loads(saved.read_text()), dataclasses.asdict(args)
        diff = [f"{k} {before[k]!r} -> {now[k]!r}" for k in SHAPE_FIELDS if k in before and before[k] != now[k]]
        if diff:
            raise ConfigError(f"{step_dir} was saved by a model built with other settings ({'; '.join(diff)}); "
                              "resume with the same model settings, or start a new train.run_dir")

    def write_metadata(self, cfg: Config, args: ModelArgs, tokenizer, resumed_at: int | None = None) -> str:
        """The resolved config, model shape and tokenizer: written once the launch has started for real
        (checks passed, checkpoint loaded), so a launch that fails leaves an existing run's files as they were.

        A resume with other settings (a lower lr after a spike, more steps) keeps the config it replaces as
        config.resolved.before-step-N.toml, so the run's history of settings is not lost; returns the changes
        ('' when none)."""
        changed = ""
        if self.is_main:
            resolved = self.path / "config.resolved.toml"
            if resumed_at is not None and resolved.is_file():
                from cptrain.launch import changed_settings

                changed = changed_settings(resolved, cfg)
                if changed:
                    keep, n = self.path / f"config.resolved.before-step-{resumed_at}.toml", 1
                    while keep.exists():  # resumed at the same step twice
                        n += 1
                        keep = self.path / f"config.resolved.before-step-{resumed_at}-{n}.toml"
                    resolved.rename(keep)
                    changed = f"{changed} (the earlier config is kept as {keep.name})"
            resolved.write_text(cfg.to_toml())
            (self.path / "model_args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))
            tokenizer.save_pretrained(self.path / "tokenizer")
        return changed

    def write_sample(self, tag: str, text: str) -> None:
        if self.is_main:
            (self.path / "samples" / f"{tag}.txt").write_text(text)

    def save_checkpoint(self, trainer, loader, keep_latest_k: int) -> Path:
        step_dir = self.path / "checkpoints" / f"step-{trainer.step}"
        checkpoint.save(step_dir, trainer.model, trainer.optimizer, data_state=loader.state_dict(),
                        train_state={"step": trainer.step, "tokens_seen": trainer.tokens_seen},
                        keep_latest_k=keep_latest_k)
        return step_dir

    def export(self, model, args: ModelArgs, tokenizer) -> None:
        from cptrain.export import export_state_dict

        sd = checkpoint.full_model_state_dict(model)
        if self.is_main:
            out = export_state_dict(args, sd, self.path / "hf", tokenizer, dtype=torch.bfloat16)
            print(f"exported Hugging Face model to {out}", flush=True)
        dist.barrier()

    def write_summary(self, summary: dict) -> None:
        if self.is_main:
            data_report = summary.pop("data_report", None)
            text = json.dumps(json_safe(summary), indent=2, allow_nan=False)  # a NaN loss is null
            (self.path / "report" / "summary.json").write_text(text)
            if data_report:
                (self.path / "report" / "data.json").write_text(json.dumps(data_report, indent=2, default=str))


def _flops_per_step(micro: list[dict], args: ModelArgs, dp: int) -> float:
    """Training FLOPs of this rank's micro-batches x dp (cptrain.flops: attention over the real documents)."""
    lengths = []
    for b in micro:
        for row in b["document_ids"]:
            lengths += torch.unique_consecutive(row, return_counts=True)[1].tolist()
    return training_flops(args, lengths) * dp


def step_metrics(out: dict, micro: list[dict], dt: float, t_data: float, dp: int, args: ModelArgs,
                 device: torch.device) -> dict:
    tokens = sum(b["input_ids"].numel() for b in micro) * dp
    values = {
        "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
        "tokens_per_s": tokens / dt, "tokens_per_s_per_gpu": tokens / dt / dp,
        "label_tokens": out["tokens"], "step_time_s": dt, "data_wait_frac": t_data / dt,
        "peak_mem_gib": peak_memory_gib(device), "skipped": out["skipped"],
        "nonfinite": out.get("nonfinite", False), "tokens_seen": out.get("tokens_seen"),
    }
    peak = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if peak:  # GPUs of known dense BF16 peak
        values["mfu"] = _flops_per_step(micro, args, dp) / dt / (peak * dp)
    values["padding_frac"] = float(sum(int((b["document_ids"] < 0).sum()) for b in micro)) / max(
        1, sum(b["input_ids"].numel() for b in micro))
    values["ignored_frac"] = float(sum(int((b["labels"] == IGNORE_INDEX).sum()) for b in micro)) / max(
        1, sum(b["labels"].numel() for b in micro))
    return values
