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
    plus the fp32 logits chunk); with full checkpointing only one block's activations stay live."""
    n = count_parameters(args)["total"]
    tokens = seq_len * micro_batch_size
    per_layer = tokens * args.dim * 34 + tokens * args.ffn_dim * 2 * 3
    states = 16 * n
    return {
        "weights_bf16": 2 * n / GIB,
        "params_grads_adam_fp32": states / GIB,
        "activations_no_ckpt": per_layer * args.n_layers / GIB,
        "activations_full_ckpt": (per_layer + tokens * args.dim * 2 * args.n_layers) / GIB,
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
    return "\n".join(lines)
