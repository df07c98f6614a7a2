"""AdamW with parameter groups: no decay on norms/biases, LR multipliers for embeddings and lm_head."""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from cptrain.config import OptimConfig
from cptrain.configtools import ConfigError


def _clean(name: str) -> str:
    """Drop wrapper prefixes (activation checkpointing, compile) so patterns see model names."""
    for token in ("_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(token, "")
    return name


def apply_freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set requires_grad=False on parameters whose names match any fnmatch pattern; return them."""
    frozen = []
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatch(_clean(name), pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(_clean(name))
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
        name = _clean(name)
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
    fused = cfg.fused == "on" or (cfg.fused == "auto" and device_type == "cuda")
    groups = param_groups(model, cfg)
    if not groups:
        raise ConfigError("no trainable parameters: optim.freeze froze everything")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None,
                             foreach=None if fused else True)
