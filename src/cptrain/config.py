"""Run configuration: typed sections loaded from a TOML recipe plus `key.sub=value` overrides.

Everything is validated here, before any model, tokenizer or process group exists, so a typo costs
seconds, not a queued job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import tomli_w

from cptrain.configtools import (
    ConfigError,
    apply_overrides,
    check_keys,
    from_dict,
    load_toml,
    override_for,
    require,
    to_dict,
)
from cptrain.data.config import DataConfig

__all__ = ["Config", "ConfigError", "load_config"]

log = logging.getLogger("cptrain.config")


@dataclass
class ModelConfig:
    preset: str | None = None  # a name from models/presets.py (random init unless `path` is given)
    path: str | None = None  # HF directory, .gguf file, or builtin:smollm2-135m
    tokenizer: str | None = None  # tokenizer source when it differs from model.path (random-init presets)
    init: Literal["pretrained", "random"] = "pretrained"
    overrides: dict = field(default_factory=dict)  # shape fields on top of the preset, e.g. n_layers
    # auto: on a Hopper/Blackwell GPU with flash-attn-4 installed, `varlen` for every row: each document as
    # its own causal sequence in FlashAttention 4 (ops/varlen.py; faster than FlexAttention on packed rows
    # and than cuDNN on single-document rows, benchmarks/kernels_attention.py). Otherwise plain causal SDPA
    # (cuDNN first) for rows that are one document each and FlexAttention for packed rows on CUDA; with
    # long_doc_min_tokens > 0, packed rows run `hybrid`: documents at least that long as their own causal
    # SDPA calls, FlexAttention for the rest (ops/attention.py; on H100 it paid off only for 64K-token rows).
    # `varlen` without FlashAttention 4 (CPU) runs the op's exact per-document reference: for tests.
    attention: Literal["auto", "sdpa", "flex", "hybrid", "varlen", "reference"] = "auto"
    long_doc_min_tokens: int = 0  # 0: off (hybrid without it uses HYBRID_MIN_DOC_TOKENS)
    loss: Literal["naive", "fused_chunked"] = "fused_chunked"
    tiled_mlp: str | int = "off"  # off | auto | N tiles (TOML 4 or "4"; kept as the string "4")
    activation_checkpointing: Literal["none", "full"] = "none"
    compile: bool = False

    def validate(self, prefix: str) -> None:
        require(self.preset is not None or self.path is not None, f"{prefix}.preset", self.preset,
                "set model.preset (a named shape) or model.path (HF dir, .gguf, builtin:smollm2-135m)")
        if self.preset is not None:
            from cptrain.models.presets import PRESETS

            require(self.preset in PRESETS, f"{prefix}.preset", self.preset,
                    f"one of {', '.join(sorted(PRESETS))}")
        if self.init == "pretrained" and self.path is None:
            raise ConfigError(f"{prefix}.init = 'pretrained' needs {prefix}.path; "
                              f"use {prefix}.init = 'random' to train a preset from scratch",
                              f"{prefix}.init")
        require(self.long_doc_min_tokens >= 0, f"{prefix}.long_doc_min_tokens", self.long_doc_min_tokens,
                ">= 0 (0: no hybrid attention under attention = 'auto')")
        tiles = str(self.tiled_mlp)
        ok = tiles in ("off", "auto") or (tiles.isdigit() and int(tiles) >= 1)
        require(ok, f"{prefix}.tiled_mlp", self.tiled_mlp, "'off', 'auto' or a tile count >= 1")
        self.tiled_mlp = tiles  # one type downstream (models/build.py, ops/tiled_mlp.py)
        self._check_overrides(prefix)
        if self.tokenizer is None and self.path is None:
            raise ConfigError(f"{prefix}.tokenizer is needed when {prefix}.path is unset (an HF directory, "
                              ".gguf file or builtin:smollm2-135m to take the tokenizer from)",
                              f"{prefix}.tokenizer")

    def _check_overrides(self, prefix: str) -> None:
        """Names, types and shape rules (heads vs kv heads, rope_scaling...) of `overrides` now, so that
        --dry-run refuses them, not the model build once the run has started. On a preset the whole shape is
        known; a `model.path` shape is read from its config.json at run time (models/build.py checks it
        then), so here only the rules that read overridden fields alone apply."""
        from cptrain.models.presets import ModelArgs, get_preset

        args = from_dict(ModelArgs, self.overrides, f"{prefix}.overrides")
        self.overrides = {name: getattr(args, name) for name in self.overrides}
        if self.path is None:
            args = get_preset(self.preset).replace(**self.overrides)
        for fields_read, why in args.broken_rules():
            blamed = [name for name in fields_read if name in self.overrides]
            if self.path is None or len(blamed) == len(fields_read):
                key = f"{prefix}.overrides.{blamed[0]}" if blamed else f"{prefix}.preset"
                value = self.overrides[blamed[0]] if blamed else self.preset
                raise ConfigError(f"{key} = {value!r} is not allowed: {why}", key)

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer or self.path


@dataclass
class ParallelConfig:
    dp_shard: int = -1  # -1: all ranks not used by other dimensions
    dp_replicate: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    # auto: FSDP2 when the data-parallel mesh has several ranks; one rank keeps plain fp32 parameters cast to
    # precision.param_dtype where used (same numerics, none of FSDP2's copies). always: FSDP2 even on one rank
    fsdp: Literal["auto", "always"] = "auto"
    # false: each block keeps its gathered bf16 parameters from forward to backward (one all-gather per step
    # instead of two; costs the unsharded bf16 weights in memory, ZeRO-2 style). The last block never reshards
    reshard_after_forward: bool = True

    def validate(self, prefix: str) -> None:
        # parallel/dims.py builds a 1-D FSDP mesh only; refusing the others here lets --dry-run say so
        for name in ("dp_replicate", "tp", "pp", "cp"):
            v = getattr(self, name)
            require(v == 1, f"{prefix}.{name}", v,
                    "1 (only FSDP data parallelism, parallel.dp_shard, is implemented in this version)")
        require(self.dp_shard == -1 or self.dp_shard >= 1, f"{prefix}.dp_shard", self.dp_shard, "-1 or >= 1")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    embedding_lr_mult: float = 1.0  # CPT practice: 0.1-0.5 keeps the pretrained embeddings stable
    lm_head_lr_mult: float = 1.0
    freeze: list[str] = field(default_factory=list)  # fnmatch patterns of parameter names
    # AdamW kernel: "triton" (ops/adamw.py: one kernel per group), "on" (torch's fused), "off" (torch's
    # foreach); "auto": triton on CUDA where Triton is installed, else torch's fused on CUDA, foreach on CPU
    fused: Literal["auto", "on", "off", "triton"] = "auto"

    def validate(self, prefix: str) -> None:
        require(self.lr > 0, f"{prefix}.lr", self.lr, "a learning rate > 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{prefix}.betas", self.betas,
                "two numbers in [0, 1)")
        require(self.eps > 0, f"{prefix}.eps", self.eps, "> 0")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, ">= 0")
        for name in ("embedding_lr_mult", "lm_head_lr_mult"):
            require(getattr(self, name) >= 0, f"{prefix}.{name}", getattr(self, name), ">= 0")


@dataclass
class ScheduleConfig:
    name: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_steps: int = 0
    decay_steps: int | None = None  # WSD decay length in steps; else decay_fraction of train.steps
    decay_fraction: float = 0.2
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"
    min_lr_ratio: float = 0.0

    def validate(self, prefix: str) -> None:
        require(self.warmup_steps >= 0, f"{prefix}.warmup_steps", self.warmup_steps, ">= 0")
        require(0 <= self.decay_fraction <= 1, f"{prefix}.decay_fraction", self.decay_fraction, "in [0, 1]")
        require(self.decay_steps is None or self.decay_steps >= 0, f"{prefix}.decay_steps", self.decay_steps,
                ">= 0")
        require(0 <= self.min_lr_ratio <= 1, f"{prefix}.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")

    def wsd_decay_steps(self, total_steps: int) -> int:
        """Length of the WSD decay in a run of `total_steps` (here, not in schedule.py, so that config
        checks can use it without importing torch). A decay_fraction > 0 decays over one step at least:
        rounded to 0 (0.2 of 2-4 steps) the last step would stay at the peak, not reach min_lr_ratio. A
        one-step run (a smoke test) keeps its step at the peak instead of training it at min_lr_ratio."""
        if self.decay_steps is not None:
            return min(self.decay_steps, total_steps)
        steps = int(round(self.decay_fraction * total_steps))
        return max(1, steps) if self.decay_fraction > 0 and total_steps > 1 else steps

    def overlap_warning(self, total_steps: int) -> str | None:
        """Why a WSD warmup that runs into the decay is likely a mistake, or None. The warmup wins while it
        lasts (schedule.lr_multiplier), so the LR peaks and then drops into the middle of the decay with no
        stable phase: legal, but rarely meant (e.g. a warmup sized for a longer run than train.steps)."""
        n_decay = self.wsd_decay_steps(total_steps)
        if self.name != "wsd" or n_decay == 0 or self.warmup_steps + n_decay <= total_steps:
            return None
        if self.warmup_steps > total_steps:  # the trainer's own warning says the LR never reaches its peak
            return None
        given = (f"schedule.decay_steps = {self.decay_steps}" if self.decay_steps is not None
                 else f"schedule.decay_fraction = {self.decay_fraction:g}")
        if self.warmup_steps == total_steps:  # the warmup's last step is the run's: no decay step is left
            return (f"schedule.warmup_steps = {self.warmup_steps} lasts all train.steps = {total_steps}: the "
                    f"learning rate peaks on the last step and the WSD decay ({given}, the last {n_decay} "
                    "steps) never runs, so the run does not end at schedule.min_lr_ratio; keep warmup_steps + "
                    "decay steps <= train.steps")
        return (f"schedule.warmup_steps = {self.warmup_steps} overlaps the WSD decay: with train.steps = "
                f"{total_steps} the decay ({given}) takes the last {n_decay} steps, from step "
                f"{total_steps - n_decay}, so the learning rate drops from the warmup's peak into the middle "
                "of the decay with no stable phase; keep warmup_steps + decay steps <= train.steps")


@dataclass
class PrecisionConfig:
    param_dtype: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    # the parameters the optimizer updates, and with them the AdamW moments and the gradients. fp32: master
    # weights (the default). bf16: every parameter, gradient and moment in bf16 (what HF Trainer does with a
    # bf16 model): half the memory and optimizer traffic, but updates smaller than a weight's bf16 spacing
    # round away, which shows late in a decay to a small LR
    master_dtype: Literal["fp32", "bf16"] = "fp32"
    fp8: bool = False

    def validate(self, prefix: str) -> None:
        if self.fp8:
            raise ConfigError(f"{prefix}.fp8 = true: FP8 training is not implemented in this version; "
                              "remove the key (bf16 is used on GPUs)", f"{prefix}.fp8")


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0: only at the end
    keep_latest_k: int = 2
    resume: str = "auto"  # auto (newest committed step in run_dir) | never | path to a step folder
    load_optimizer: bool = True  # false: weights only (new optimizer, e.g. a CPT stage on new data)
    load_data_state: bool = True  # false: restart the data stream (e.g. after changing the mix)
    save_final: bool = True

    def validate(self, prefix: str) -> None:
        require(self.every_steps >= 0, f"{prefix}.every_steps", self.every_steps, ">= 0")
        require(self.keep_latest_k >= 0, f"{prefix}.keep_latest_k", self.keep_latest_k, ">= 0 (0 keeps all)")


@dataclass
class LoggingConfig:
    every_steps: int = 1
    tensorboard: bool = False
    wandb_project: str | None = None

    def validate(self, prefix: str) -> None:
        require(self.every_steps >= 1, f"{prefix}.every_steps", self.every_steps, ">= 1")


@dataclass
class EvalConfig:
    every_steps: int = 0  # 0: only before and after training
    max_batches: int = 8
    sample_prompt: str = "def "
    sample_tokens: int = 48

    def validate(self, prefix: str) -> None:
        require(self.every_steps >= 0, f"{prefix}.every_steps", self.every_steps,
                ">= 0 (0: only before and after training)")
        require(self.max_batches >= 1, f"{prefix}.max_batches", self.max_batches, ">= 1")
        require(self.sample_tokens >= 0, f"{prefix}.sample_tokens", self.sample_tokens, ">= 0 (0: no sample)")
        require(self.sample_prompt != "" or self.sample_tokens == 0, f"{prefix}.sample_prompt",
                self.sample_prompt, "some text for the model to continue (or eval.sample_tokens = 0)")


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    steps: int = 100
    seq_len: int = 2048
    micro_batch_size: int = 1  # rows per rank per forward
    global_batch_size: int = 0  # rows per optimizer step across ranks; 0 = micro_batch_size * dp
    max_grad_norm: float = 1.0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    export_hf: bool = False  # write an HF directory into run_dir/hf at the end
    skip_nan_steps: bool = True
    # a run whose loss or gradient norm stays NaN/inf this many steps in a row has diverged: it stops with an
    # error instead of spending the rest of its steps (0: never stop)
    max_nonfinite_steps: int = 10
    stop_at_step: int = 0  # >0: checkpoint and exit after this step, as a pre-emption would (resume goes on)

    def validate(self, prefix: str) -> None:
        require(self.steps >= 1, f"{prefix}.steps", self.steps, ">= 1")
        require(self.seq_len >= 2, f"{prefix}.seq_len", self.seq_len, ">= 2")
        require(self.micro_batch_size >= 1, f"{prefix}.micro_batch_size", self.micro_batch_size, ">= 1")
        require(self.global_batch_size >= 0, f"{prefix}.global_batch_size", self.global_batch_size, ">= 0")
        # the multiple of micro_batch_size x data-parallel ranks waits for the world size (train.py)
        require(self.global_batch_size % self.micro_batch_size == 0, f"{prefix}.global_batch_size",
                self.global_batch_size, f"a multiple of {prefix}.micro_batch_size = {self.micro_batch_size} "
                "(0: micro_batch_size x data-parallel ranks)")
        require(self.max_grad_norm >= 0, f"{prefix}.max_grad_norm", self.max_grad_norm, ">= 0 (0 disables)")
        require(self.max_nonfinite_steps >= 0, f"{prefix}.max_nonfinite_steps", self.max_nonfinite_steps,
                ">= 0 (0: never stop on non-finite steps)")
        require(self.stop_at_step >= 0, f"{prefix}.stop_at_step", self.stop_at_step,
                ">= 0 (0: run all steps)")

    def micro_batches_per_step(self, ranks: int) -> int:
        """Gradient accumulation: micro-batches each of `ranks` data-parallel ranks runs per optimizer step."""
        per_step = self.micro_batch_size * ranks
        total = self.global_batch_size or per_step
        if total % per_step:
            raise ConfigError(f"train.global_batch_size = {total} must be a multiple of micro_batch_size x "
                              f"data-parallel ranks = {self.micro_batch_size} x {ranks}",
                              "train.global_batch_size")
        return total // per_step


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_toml(self) -> str:
        return tomli_w.dumps(to_dict(self))


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *,
                need_data: bool | None = None) -> Config:
    """Read a recipe, apply overrides and validate every section, those the recipe leaves out included;
    raises ConfigError naming the key at fault and whether the recipe or a command-line override set it.

    `need_data` (default: when a recipe is read) requires data.sources: a recipe is there to be run, while a
    config built from overrides alone (tests, benchmarks) may feed the Trainer batches of its own."""
    raw = load_toml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides, Config)
    try:
        _require_keys(raw, "the recipe" if path is not None else "the config",
                      path is not None if need_data is None else need_data)
        for section in fields(Config):
            raw.setdefault(section.name, {})  # an empty table: its defaults get validated too
        cfg = from_dict(Config, raw)
    except ConfigError as e:
        override = override_for(e.key, overrides)
        where = f"command-line override {override!r}: " if override else f"{path}: " if path else ""
        raise ConfigError(f"{where}{e}", e.key) from None
    _warn_about(cfg)
    return cfg


def _warn_about(cfg: Config) -> None:
    """Settings that are valid but probably not meant. Every rank of a launch loads the config: only rank 0
    (RANK or SLURM_PROCID, read as parallel/dims.py does) logs them."""
    if (os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0") != "0":
        return
    message = cfg.schedule.overlap_warning(cfg.train.steps)
    if message:
        log.warning(message)


def _require_keys(raw: dict, where: str, need_data: bool) -> None:
    """Keys with no usable default, reported as missing rather than as the default's failure further on
    (an unset model.path used to surface as "model.path = 'None': no such file" once the run had started)."""
    # a misspelt key first: `[modle]`, `pth = ...` or `[[data.source]]` is the cause of the missing one
    check_keys(Config, raw)
    for section, cls in (("model", ModelConfig), ("data", DataConfig)):
        if isinstance(raw.get(section), dict):
            check_keys(cls, raw[section], section)
    model = raw.get("model", {})
    if isinstance(model, dict) and "path" not in model and "preset" not in model:
        from cptrain.models.presets import PRESETS

        raise ConfigError(f"model.path and model.preset are both missing from {where}: set model.path (an HF "
                          "directory, .gguf file or builtin:smollm2-135m) or model.preset (a named shape: "
                          f"{', '.join(PRESETS)}) in its [model] table", "model.path")
    data = raw.get("data", {})
    if need_data and isinstance(data, dict) and not data.get("sources"):
        raise ConfigError(f"data.sources is missing from {where}: add a [[data.sources]] table with a "
                          "path (a file, folder, glob, builtin:python-stdlib, or with format = 'datasets' a "
                          "dataset name)", "data.sources")
