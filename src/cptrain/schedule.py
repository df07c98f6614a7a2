"""Learning-rate schedules as pure functions of the step: WSD, cosine, constant, with linear warmup.

A pure function of (step, total steps) makes resume trivial and lets a WSD decay be branched from any
stable-phase checkpoint: resume with a larger or smaller `train.steps` and the decay moves with it.
"""

from __future__ import annotations

import math

import torch

from cptrain.config import ScheduleConfig


def _decay_shape(progress: float, shape: str) -> float:
    """Multiplier going from 1 at progress 0 to 0 at progress 1."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"schedule.decay_shape {shape!r} unknown")


def lr_multiplier(step: int, cfg: ScheduleConfig, total_steps: int) -> float:
    """LR multiplier for optimizer step `step` (0-based) of `total_steps`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cosine":
        span = total_steps - cfg.warmup_steps - 1  # the last step reaches the floor
        if span <= 0:  # one step after the warmup: the floor, unless it is a one-step run (as for WSD)
            return 1.0 if total_steps <= 1 else floor
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * _decay_shape(progress, "cosine")
    # wsd: warmup, stable at peak, then decay over the last `decay_steps` steps down to min_lr_ratio (one
    # step at least for a decay_fraction > 0: ScheduleConfig.wsd_decay_steps)
    n_decay = cfg.wsd_decay_steps(total_steps)
    decay_start = total_steps - n_decay
    if step < decay_start or n_decay == 0:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / n_decay)
    return floor + (1 - floor) * _decay_shape(progress, cfg.decay_shape)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int):
    """A LambdaLR over `lr_multiplier`; its state is just the step counter."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, cfg, total_steps))
