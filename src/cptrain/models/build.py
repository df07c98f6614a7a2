"""Build the training model: shape -> meta-device decoder -> parallelize -> materialize -> weights.

Weights of a pretrained model are read on rank 0 only and broadcast into the FSDP shards, so host
memory holds one full copy per node-rank-0, not one per GPU.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cptrain.config import ModelConfig, PrecisionConfig
from cptrain.configtools import ConfigError
from cptrain.models.decoder import Decoder
from cptrain.models.presets import ModelArgs, get_preset
from cptrain.parallel.parallelize import DTYPES, native_name, parallelize, param_dtype_for, uses_fsdp


def model_args(cfg: ModelConfig) -> ModelArgs:
    """The shape: from the HF config at `model.path`, else the preset; then `model.overrides`."""
    if cfg.path is not None:
        from cptrain.models.hf import args_from_hf_config, load_hf_config, resolve_model_path

        args = args_from_hf_config(load_hf_config(resolve_model_path(cfg.path)))
    else:
        args = get_preset(cfg.preset)
    args = args.replace(**cfg.overrides) if cfg.overrides else args
    args.check()
    return args


def configure(model: Decoder, cfg: ModelConfig, seq_len: int, micro_batch_size: int) -> None:
    """Kernel choices that live on the modules: loss, attention backend, MLP tiling."""
    model.loss_impl = cfg.loss
    model.set_attention_backend(cfg.attention)
    if cfg.tiled_mlp != "off":
        from cptrain.ops.tiled_mlp import resolve_num_tiles

        tiles = resolve_num_tiles(cfg.tiled_mlp, seq_len, model.args.dim, model.args.ffn_dim, micro_batch_size)
        for block in model.layers.values():
            block.mlp.num_tiles = tiles


def pretrained_state_dict(cfg: ModelConfig, args: ModelArgs) -> dict[str, torch.Tensor]:
    from cptrain.models.hf import hf_to_native, load_hf_state_dict, resolve_model_path

    with torch.device("meta"):
        reference = Decoder(args)
    return hf_to_native(load_hf_state_dict(resolve_model_path(cfg.path)), reference)


def check_attention(cfg: ModelConfig, args: ModelArgs, device: torch.device) -> None:
    """An explicit `model.attention = "varlen"` on a GPU needs the kernel: without it the op would run its
    per-document reference math, correct but far too slow to train with. (`auto` falls back by itself.)"""
    if cfg.attention != "varlen" or device.type != "cuda":
        return
    from cptrain.ops.varlen import flash_available, flash_head_dim_ok

    if not flash_available(device):
        raise ConfigError("model.attention = 'varlen' on a GPU needs flash-attn-4 on a Hopper or Blackwell GPU "
                          "(pip install -e '.[flash]'; CPTRAIN_FLASH4=0 also turns it off); use 'auto' to fall "
                          "back to FlexAttention / cuDNN", "model.attention")
    if not flash_head_dim_ok(args.head_size):
        raise ConfigError(f"model.attention = 'varlen': head size {args.head_size} is not one FlashAttention 4 "
                          "takes (a multiple of 8 up to 128); use 'auto'", "model.attention")


def build_model(cfg: ModelConfig, precision: PrecisionConfig, mesh, device: torch.device, *, seq_len: int,
                micro_batch_size: int, full_state_dict: dict | None = None,
                use_state_dict: bool = False, fsdp: str = "auto", reshard_after_forward: bool = True) -> Decoder:
    """A sharded (FSDP2; see `parallelize` for one rank), materialized decoder. With `use_state_dict` (on
    every rank), weights come from rank 0's `full_state_dict` instead of `model.init`."""
    args = model_args(cfg)
    check_attention(cfg, args, device)
    if device.type == "cuda" and cfg.attention in ("auto", "sdpa"):
        from cptrain.ops.attention import prefer_cudnn_sdpa

        prefer_cudnn_sdpa()
    with torch.device("meta"):
        model = Decoder(args)
    if precision.master_dtype != "fp32":
        for param in model.parameters():  # in place: tied parameters stay one parameter; buffers (RoPE) keep fp32
            param.data = param.data.to(DTYPES[precision.master_dtype])
    configure(model, cfg, seq_len, micro_batch_size)
    parallelize(model, mesh, param_dtype=param_dtype_for(precision.param_dtype, device),
                reduce_dtype=DTYPES[precision.reduce_dtype],
                activation_checkpointing=cfg.activation_checkpointing, compile_blocks=cfg.compile, fsdp=fsdp,
                reshard_after_forward=reshard_after_forward)
    model.to_empty(device=device)
    if not uses_fsdp(mesh, fsdp):
        from cptrain.models.hf import tie_weights

        # to_empty() gives each module a new parameter, untying lm_head from the embedding (FSDP2's root
        # group keeps a shared parameter shared; plain modules must be re-tied)
        tie_weights(model)
    if not use_state_dict and cfg.init == "random":
        model.init_weights()
        return model
    model.init_buffers()
    if not use_state_dict and dist.get_rank() == 0:
        full_state_dict = pretrained_state_dict(cfg, args)
    load_full_state_dict(model, full_state_dict)
    return model


@torch.no_grad()
def load_full_state_dict(model: Decoder, full: dict | None) -> None:
    """Rank 0 holds `full` (the plain Decoder's names); each tensor is broadcast in turn and every rank keeps
    its own shard. The model's own names may carry wrapper prefixes (compiled blocks: `_orig_mod.`)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    src_rank = 0
    for wrapped_name, param in model.state_dict().items():
        name = native_name(wrapped_name)
        if name == "lm_head.weight" and model.args.tie_embeddings:
            continue  # the same parameter as embed_tokens.weight
        if dist.get_rank() == src_rank:
            if name not in full:
                raise KeyError(f"weights lack {name!r}")
            tensor = full[name].to(param.device, param.dtype if not isinstance(param, DTensor) else param.dtype)
        else:
            tensor = torch.empty(param.shape, dtype=param.dtype, device=param.device)
        dist.broadcast(tensor, src=src_rank)
        if isinstance(param, DTensor):
            shard = distribute_tensor(tensor, param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(shard.to_local())
        else:
            param.copy_(tensor)
