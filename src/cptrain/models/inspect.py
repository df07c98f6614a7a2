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


# Bytes per token that one block keeps for its backward when nothing is recomputed, as the compiled block
# (torch.compile, FlashAttention 4, bf16) does: four bf16 tensors of the model width (block input, the
# residual sum and the two norm outputs, some of which inductor recomputes instead), q and the attention
# output (q width), k and v (kv width), and the MLP's gate and up projections. Measured
# (benchmarks/results/2026-11-23-1xh100-activation-memory.md, one H100, 8K tokens, two depths per shape):
# 61 / 86 / 102 KB per layer-token for llama3.2-1b / llama3.1-8b / qwen2.5-7b, where this gives 51 / 94 / 106.
def _attention_saved_per_token(args: ModelArgs) -> int:
    q_width, kv_width = args.n_heads * args.head_size, args.n_kv_heads * args.head_size
    return 2 * (2 * args.dim + 2 * q_width + 2 * kv_width)


def _mlp_saved_per_token(args: ModelArgs) -> int:
    return 2 * 2 * args.ffn_dim  # gate and up, bf16


def _mlp_work_per_token(args: ModelArgs, tiles: int) -> int:
    """What the MLP's backward adds while it runs: its three ffn-wide gradients (one tile's worth when tiled)
    and two model-width gradients."""
    return 2 * 3 * args.ffn_dim // tiles + 2 * 2 * args.dim


# The attention half of a block's backward peaks at about 34 bytes per token per unit of model width, its
# saved tensors included: the fp32 dQ/dK/dV accumulators of FlashAttention 4, the q/k/v gradients and the
# compiled RoPE and norm backward's temporaries. Measured: llama3.2-1b at 128K tokens with full checkpointing
# and a tiled MLP, where this half sets the peak (11.5 GiB at 4 blocks); untiled, the MLP half is larger.
_ATTENTION_PEAK_BYTES_PER_DIM = 34


def _attention_work_per_token(args: ModelArgs) -> int:
    return max(0, _ATTENTION_PEAK_BYTES_PER_DIM * args.dim - _attention_saved_per_token(args))


def memory_estimate(args: ModelArgs, seq_len: int, micro_batch_size: int) -> dict[str, float]:
    """GiB per GPU with no sharding. States: fp32 master params + fp32 grads + AdamW (2 x fp32) = 16 B/param,
    or bf16 weights, grads and AdamW states (`precision.master_dtype = "bf16"`) = 8 B/param.

    Activations of a bf16 step with compile on (the GPU setting): without checkpointing every block's saved
    tensors, plus the larger of one block's MLP and attention backward working sets, plus the [tokens, dim]
    tensors outside the blocks; with full checkpointing each block keeps only its bf16 input and one block at
    a time holds its saved tensors; with `model.tiled_mlp = "auto"` as well (when it tiles at this length)
    that block's gate/up are gone and its MLP backward works one tile at a time, so the attention backward
    sets the peak. The fused loss's logits chunk (at most ~0.5 GiB) lives only in the forward, when less is
    held. With the states, 0.89-1.11x of every peak measured on one H100 or H200 (1B, 8B, Qwen-7B shapes;
    8K-128K tokens; with and without checkpointing and tiling)."""
    from cptrain.ops.tiled_mlp import resolve_num_tiles

    n = count_parameters(args)["total"]
    tokens = seq_len * micro_batch_size
    tiles = resolve_num_tiles("auto", seq_len, args.dim, args.ffn_dim, micro_batch_size)
    saved = tokens * (_attention_saved_per_token(args) + _mlp_saved_per_token(args))
    outside = tokens * 2 * 2 * args.dim  # the embedding output and the loss's d(hidden)
    checkpoints = tokens * args.dim * 2 * args.n_layers
    attention_work = tokens * _attention_work_per_token(args)
    work = max(tokens * _mlp_work_per_token(args, 1), attention_work)
    tiled = (checkpoints + tokens * _attention_saved_per_token(args)
             + max(tokens * _mlp_work_per_token(args, tiles), attention_work))
    return {
        "weights_bf16": 2 * n / GIB,
        "params_grads_adam_fp32": 16 * n / GIB,
        "params_grads_adam_bf16": 8 * n / GIB,
        "activations_no_ckpt": (args.n_layers * saved + work + outside) / GIB,
        "activations_full_ckpt": (checkpoints + saved + work + outside) / GIB,
        # None: auto does not tile at this length, so the line above already holds
        "activations_full_ckpt_tiled": (tiled + outside) / GIB if tiles > 1 else None,
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
        f"memory (GiB)     bf16 weights {mem['weights_bf16']:.1f}; params+grads+AdamW "
        f"{mem['params_grads_adam_fp32']:.1f} fp32, {mem['params_grads_adam_bf16']:.1f} with "
        "precision.master_dtype = \"bf16\" (divide by the FSDP shard count)",
        f"activations      seq {seq_len} x batch {micro_batch_size}: ~{mem['activations_no_ckpt']:.1f} GiB "
        f"without checkpointing, ~{mem['activations_full_ckpt']:.1f} GiB with full checkpointing",
    ]
    if mem["activations_full_ckpt_tiled"] is not None:
        lines.append(f"                 ~{mem['activations_full_ckpt_tiled']:.1f} GiB with full checkpointing and "
                     f"model.tiled_mlp = \"auto\" (about the untiled time under checkpointing)")
    return "\n".join(lines)
