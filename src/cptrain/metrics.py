"""Run metrics: a console progress line with ETA, metrics.jsonl, optional TensorBoard / W&B."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from cptrain.configtools import ConfigError

GIB = 1024**3


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return 0.0


def json_safe(value):
    """`value` with every NaN/inf float made None (JSON null), inside dicts and lists too. json.dumps writes them
    as bare NaN / Infinity, which Python reads back but strict JSON readers (JavaScript's JSON.parse, Go's
    encoding/json) refuse: one diverged step would make the whole metrics file unreadable there."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def check_loggers(tensorboard: bool, wandb_project: str | None) -> None:
    """Import the optional loggers the config asks for: a missing package is a ConfigError naming its key. The
    trainer calls it before it reads data or makes the run folder, so the error leaves no half-made folder."""
    if tensorboard:
        _summary_writer()
    if wandb_project:
        _wandb(wandb_project)


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("logging.tensorboard = true needs the tensorboard package: pip install "
                          "tensorboard (or set logging.tensorboard = false)", "logging.tensorboard") from None
    return SummaryWriter


def _wandb(project: str):
    try:
        import wandb
    except ImportError:
        raise ConfigError(f"logging.wandb_project = {project!r} needs the wandb package: "
                          "pip install wandb (or remove logging.wandb_project)", "logging.wandb_project") from None
    return wandb


class MetricsLogger:
    """Rank 0 writes; other ranks construct it with `enabled=False` and every call is a no-op."""

    def __init__(self, run_dir: Path, total_steps: int, enabled: bool, tensorboard: bool = False,
                 wandb_project: str | None = None, config: dict | None = None):
        self.enabled = enabled
        self.total_steps = total_steps
        self.start = time.perf_counter()
        self.start_step: int | None = None
        self._tb = self._wandb = None
        if enabled:  # the packages first: a missing one leaves the run folder as it was
            check_loggers(tensorboard, wandb_project)
        self._jsonl = (run_dir / "metrics.jsonl").open("a") if enabled else None
        if enabled and tensorboard:
            self._tb = _summary_writer()(str(run_dir / "tensorboard"))
        if enabled and wandb_project:
            # the run's resolved config, so W&B can filter and compare runs by their settings
            self._wandb = _wandb(wandb_project).init(project=wandb_project, dir=str(run_dir), config=config or {})

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        # strict JSON: a NaN/inf value is null (the step's `nonfinite` flag says which it was)
        self._jsonl.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def progress(self, step: int, values: dict) -> None:
        """One console line: step, loss, lr, tokens/s, memory, ETA."""
        if not self.enabled:
            return
        if self.start_step is None:  # the clock starts where this launch's first reported step began
            self.start_step = step - 1
            self.start = time.perf_counter() - float(values.get("step_time_s", 0.0))
        done = step - self.start_step
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        parts = [f"step {step}/{self.total_steps}", f"loss {values['loss']:.4f}", f"lr {values['lr']:.2e}",
                 f"tok/s {values['tokens_per_s']:,.0f}"]
        if values.get("mfu"):
            parts.append(f"mfu {values['mfu'] * 100:.1f}%")
        if values.get("peak_mem_gib"):
            parts.append(f"mem {values['peak_mem_gib']:.1f}GiB")
        parts.append(f"eta {format_eta(eta)}")
        print(" | ".join(parts), flush=True)

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
