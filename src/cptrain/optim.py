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
    """Set requires_grad=False on parameters whose names match any fnmatch pattern; return them.

    The patterns are checked first (`check_freeze`), so a pattern that matches nothing leaves the model as it
    was."""
    check_freeze(model, patterns)
    frozen = []
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatch(native_name(name), pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(native_name(name))
    return frozen


def check_freeze(model: nn.Module, patterns: list[str]) -> None:
    """Refuse `optim.freeze` patterns that match no parameter, or that match them all. Needs only the names:
    the trainer runs it on a meta-device model before reading data or making the run folder."""
    names = [native_name(n) for n, _ in model.named_parameters()]
    unmatched = [pat for pat in patterns if not any(fnmatch.fnmatch(n, pat) for n in names)]
    if unmatched:
        raise ConfigError(f"optim.freeze patterns {unmatched} match no parameter (names look like "
                          f"'layers.0.mlp.up_proj.weight', 'embed_tokens.weight'){_tied_hint(model, unmatched)}",
                          "optim.freeze")
    if all(any(fnmatch.fnmatch(n, pat) for pat in patterns) for n in names):
        raise ConfigError(f"no trainable parameters: optim.freeze = {patterns} froze everything", "optim.freeze")


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Names of parameters shared with an earlier one, mapped to that one's name: a tied lm_head gives
    {'lm_head.weight': 'embed_tokens.weight'}. `named_parameters()` lists a shared parameter once, under the
    first name, so a pattern for the second name matches nothing."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        name = native_name(name)
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _tied_hint(model: nn.Module, unmatched: list[str]) -> str:
    """Why a pattern for a tied parameter's second name matches nothing, and the pattern that would."""
    hints = []
    for alias, shared in tied_aliases(model).items():
        pats = [pat for pat in unmatched if fnmatch.fnmatch(alias, pat)]
        if pats:
            hints.append(f"{', '.join(map(repr, pats))}: {alias} is tied to {shared} (tied embeddings: one tensor "
                         f"serves both) and is listed under that name; freeze it as {shared!r} (this freezes the "
                         "input embedding too)")
    return "; " + "; ".join(hints) if hints else ""


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
    kernel = adamw_kernel(cfg.fused, device_type)
    if kernel == "triton":
        return TritonAdamW(groups, weight_decay=cfg.weight_decay, **hyper)
    fused = kernel == "on"
    return keep_implementation_on_load(
        torch.optim.AdamW(groups, fused=fused or None, foreach=None if fused else True, **hyper))


def adamw_kernel(fused: str, device_type: str) -> str:
    """The AdamW kernel `optim.fused` picks on this device ("triton", "on" or "off"); a ConfigError where it
    cannot run. Needs no model: the trainer asks before reading data or making the run folder."""
    if fused == "auto":
        return "triton" if triton_adamw_available(device_type) else "on" if device_type == "cuda" else "off"
    if fused == "triton" and not triton_adamw_available(device_type) and not os.environ.get("TRITON_INTERPRET"):
        raise ConfigError(f"optim.fused='triton' needs a CUDA device and the triton package (device: "
                          f"{device_type}); use 'on' (torch's fused AdamW) or 'off' (foreach)", "optim.fused")
    return fused


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
