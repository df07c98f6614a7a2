"""`cptrain inspect-model`: architecture, parameter count and a training-memory estimate."""

from __future__ import annotations

from cptrain.models.presets import PRESETS, ModelArgs, count_parameters, get_preset

GIB = 1024**3


def args_for(model: str) -> ModelArgs:
    """A preset name, or a path/builtin whose HF config is read (no weights are loaded)."""
    if model in PRESETS:
        return get_preset(model)
    from cptrain.configtools import ConfigError, closest
    from cptrain.models.hf import args_from_hf_config, load_hf_config, resolve_model_path

    try:
        path = resolve_model_path(model)
    except ConfigError as e:  # a mistyped preset name reads as a missing path: offer the preset too
        if model.startswith("builtin:"):
            raise
        raise ConfigError(f"{e}, and not a preset name{closest(model, PRESETS)} (presets: "
                          f"{', '.join(PRESETS)})") from None
    return args_from_hf_config(load_hf_config(path))


def memory_estimate(args: ModelArgs, seq_len: int, micro_batch_size: int) -> dict[str, float]:
    """GiB per GPU with no sharding: fp32 master params + fp32 grads + AdamW (2 x fp32) = 16 B/param;
    activations for bf16 training without checkpointing (rough: ~34 x dim bytes per token per layer
    plus the fp32 logits chunk); with full checkpointing only one block's activations stay live, and with
    `model.tiled_mlp = "auto"` as well (when it tiles at this length) that block's [tokens, ffn] part is
    gone too (1B at 128K on H100: 34.9 GiB estimated with the states, 33.4 GiB peak measured,
    benchmarks/results/2026-11-23-1xh100-cptrain-speed-128k-tiled.md)."""
    from cptrain.ops.tiled_mlp import resolve_num_tiles

    n = count_parameters(args)["total"]
    tokens = seq_len * micro_batch_size
    mlp = tokens * args.ffn_dim * 2 * 3
    per_layer = tokens * args.dim * 34 + mlp
    checkpoints = tokens * args.dim * 2 * args.n_layers
    states = 16 * n
    tiles = resolve_num_tiles("auto", seq_len, args.dim, args.ffn_dim, micro_batch_size)
    return {
        "weights_bf16": 2 * n / GIB,
        "params_grads_adam_fp32": states / GIB,
        "activations_no_ckpt": per_layer * args.n_layers / GIB,
        "activations_full_ckpt": (per_layer + checkpoints) / GIB,
        # None: auto does not tile at this length, so the line above already holds
        "activations_full_ckpt_tiled": (per_layer - mlp + checkpoints) / GIB if tiles > 1 else None,
    }


def describe_model(model: str, seq_len: int = 8192, micro_batch_size: int = 1) -> str:
    args = args_for(model)
    args.check()
    counts = count_parameters(args)
    mem = memory_estimate(args, seq_len, micro_batch_size)
    rope = args.rope_scaling["type"] if args.rope_scaling else "none"
    lines = [
        f"model            {model} ({args.family} family)",
        f"layers x dim     {args.n_layers} x {args.dim}  (ffn {args.ffn_dim}, SwiGLU)",
        f"attention        {args.n_heads} heads, {args.n_kv_heads} kv heads (GQA {args.n_heads // args.n_kv_heads}:1),"
        f" head dim {args.head_size}, qkv bias {args.qkv_bias}, qk-norm {args.qk_norm}",
        f"rope             theta {args.rope_theta:g}, scaling {rope}, max positions {args.max_seq_len}",
        f"vocab            {args.vocab_size}, embeddings {'tied' if args.tie_embeddings else 'untied'}",
        f"parameters       {counts['total']:,} ({counts['total'] / 1e9:.2f}B); "
        f"non-embedding {counts['non_embedding']:,} ({counts['non_embedding'] / 1e9:.2f}B)",
        f"memory (GiB)     bf16 weights {mem['weights_bf16']:.1f}; fp32 params+grads+AdamW "
        f"{mem['params_grads_adam_fp32']:.1f} (divide by the FSDP shard count)",
        f"activations      seq {seq_len} x batch {micro_batch_size}: ~{mem['activations_no_ckpt']:.1f} GiB "
        f"without checkpointing, ~{mem['activations_full_ckpt']:.1f} GiB with full checkpointing",
    ]
    if mem["activations_full_ckpt_tiled"] is not None:
        lines.append(f"                 ~{mem['activations_full_ckpt_tiled']:.1f} GiB with full checkpointing and "
                     f"model.tiled_mlp = \"auto\" (about the untiled time under checkpointing)")
    return "\n".join(lines)
