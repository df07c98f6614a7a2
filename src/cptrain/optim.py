"""AdamW with parameter groups: no decay on norms/biases, LR multipliers for embeddings and lm_head."""

from __future__ import annotations

import fnmatch
import os

import torch
from torch import nn

from cptrain.config import OptimConfig
from cptrain.configtools import ConfigError
from cptrain.ops.adamw import TritonAdamW, keep_implementation_on_load, triton_adamw_available
from cptrain.parallel.parallelize import native_name


def apply_freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set requires_grad=False on parameters whose names match any fnmatch pattern; return them."""
    frozen = []
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatch(native_name(name), pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(native_name(name))
    unmatched = [pat for pat in patterns if not any(fnmatch.fnmatch(n, pat) for n in frozen)]
    if unmatched:
        raise ConfigError(f"optim.freeze patterns {unmatched} match no parameter (names look like "
                          f"'layers.0.mlp.up_proj.weight', 'embed_tokens.weight')")
    return frozen


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Groups keyed by (lr multiplier, weight decay). Tied embeddings fall in the embedding group."""
    groups: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        name = native_name(name)
        if name.startswith("embed_tokens."):
            mult = cfg.embedding_lr_mult
        elif name.startswith("lm_head."):
            mult = cfg.lm_head_lr_mult
        else:
            mult = 1.0
        no_decay = p.ndim < 2 or name.endswith(".bias") or "norm" in name
        key = (mult, 0.0 if no_decay else cfg.weight_decay)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": cfg.lr * mult, "weight_decay": wd, "lr_mult": mult}
            for (mult, wd), ps in groups.items()]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if not groups:
        raise ConfigError("no trainable parameters: optim.freeze froze everything")
    hyper = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    kernel = cfg.fused
    if kernel == "auto":
        kernel = "triton" if triton_adamw_available(device_type) else "on" if device_type == "cuda" else "off"
    if kernel == "triton":
        if not triton_adamw_available(device_type) and not os.environ.get("TRITON_INTERPRET"):
            raise ConfigError(f"optim.fused='triton' needs a CUDA device and the triton package (device: "
                              f"{device_type}); use 'on' (torch's fused AdamW) or 'off' (foreach)")
        return TritonAdamW(groups, weight_decay=cfg.weight_decay, **hyper)
    fused = kernel == "on"
    return keep_implementation_on_load(
        torch.optim.AdamW(groups, fused=fused or None, foreach=None if fused else True, **hyper))


def folds_clip_and_skip(optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer reads `grad_scale` (the clip divisor) and `found_inf` (skip) on the device."""
    return bool(getattr(optimizer, "takes_grad_scale", False) or optimizer.param_groups[0].get("fused"))


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """Which AdamW kernel runs, for logs and run summaries."""
    if isinstance(optimizer, TritonAdamW):
        return "AdamW (Triton, cptrain)"
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "AdamW (torch fused)"
    return "AdamW (torch foreach)" if group.get("foreach") else "AdamW (torch)"
