"""Checks a launch makes before it writes anything in its run folder: the tokenizer against the model's
vocabulary, a run that is already complete, and the number of ranks against the checkpoint's."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from cptrain import checkpoint
from cptrain.config import Config
from cptrain.configtools import ConfigError


def check_vocab(args, tokenizer) -> None:
    """Token ids at or past the embedding's rows would crash the first forward, deep in torch.embedding."""
    n = len(tokenizer)
    if n > args.vocab_size:
        raise ConfigError(f"the model's vocab_size ({args.vocab_size}) is smaller than its tokenizer's {n} tokens: "
                          f"set model.overrides.vocab_size = {n} (or more), or use the model's own tokenizer")


def already_done(step_dir: Path, run_dir: Path, cfg: Config) -> dict | None:
    """A launch whose checkpoint is already at train.steps: nothing to train. The run's own checkpoint: report it
    and leave the folder untouched (relaunching a finished job must not rewrite its results). A checkpoint
    from elsewhere: the user meant to train on, so train.steps is wrong."""
    at = checkpoint.saved_step(step_dir)
    if at < cfg.train.steps:
        return None
    if step_dir.parent != run_dir / "checkpoints":
        raise ConfigError(f"checkpoint.resume = {cfg.checkpoint.resume!r} was saved at step {at}, and "
                          f"train.steps = {cfg.train.steps} leaves nothing to train: raise train.steps")
    if dist.get_rank() == 0:
        print(f"run already complete: {step_dir} is at step {at} of train.steps = {cfg.train.steps}; nothing to "
              "do (raise train.steps to train on)", flush=True)
        changed = changed_settings(run_dir / "config.resolved.toml", cfg)
        if changed:
            print(f"note: this launch's settings differ from the completed run's ({changed}) and were not used; "
                  "to train with them, use a new train.run_dir", flush=True)
    return {"complete_at": at}


# keys that steer one launch, not the training: a requeue with another stop step is not a change of settings
LAUNCH_ONLY_KEYS = {"train.stop_at_step", "checkpoint.resume"}


def changed_settings(resolved: Path, cfg: Config, show: int = 6) -> str:
    """The keys whose values differ between a run folder's config.resolved.toml and `cfg`, as `key: old -> new`
    ('' when they agree or the file is missing or unreadable); LAUNCH_ONLY_KEYS left out."""
    import tomllib

    from cptrain.configtools import to_dict

    try:
        before = _flat(tomllib.loads(resolved.read_text()))
    except (OSError, ValueError):
        return ""
    now = _flat(to_dict(cfg))
    diff = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(before.keys() | now.keys())
            if before.get(k) != now.get(k) and k not in LAUNCH_ONLY_KEYS]
    more = len(diff) - show
    return "; ".join(diff[:show] + ([f"and {more} more"] if more > 0 else []))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "overrides" and k != "weights":
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):  # data.sources, data.stages
            for i, x in enumerate(v):
                out.update(_flat(x, f"{prefix}{k}[{i}]."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def rank_state_plan(step_dir: Path | None, cfg: Config, world_size: int) -> tuple[bool, str]:
    """Whether to restore each rank's data position and RNG from `step_dir`, and a line to log. Saved by
    another number of ranks, the positions cannot be mapped: refused before anything is built, unless
    the config says to restart the data stream (checkpoint.load_data_state = false, or
    data.on_resume_mismatch = 'restart', which then applies to this change too)."""
    if step_dir is None or not cfg.checkpoint.load_data_state:
        return False, ""
    saved = checkpoint.saved_world_size(step_dir)
    if saved == world_size:
        return True, ""
    if cfg.data.on_resume_mismatch == "restart":
        return False, (f"{step_dir} was saved by {saved} ranks, this job has {world_size}: the data stream "
                       "restarts at the resumed step (data.on_resume_mismatch = 'restart')")
    raise ConfigError(f"{step_dir} was saved by {saved} ranks, this job has {world_size}: each rank's data "
                      f"position cannot be mapped. Resume with {saved} ranks, or keep the weights and optimizer "
                      "and restart the data stream with checkpoint.load_data_state = false (or "
                      "data.on_resume_mismatch = 'restart')")
