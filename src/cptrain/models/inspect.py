"""`cptrain inspect-model`: architecture, parameter count and a training-memory estimate."""

from __future__ import annotations

import json
from pathlib import Path

from cptrain.models.presets import PRESETS, ModelArgs, count_parameters, get_preset

GIB = 1024**3


WHAT = "a preset name, an HF directory, a .gguf file, builtin:smollm2-135m, a recipe .toml or a run folder"


def args_for(model: str) -> ModelArgs:
    """A preset name, a recipe (its model with `model.overrides`), a run folder or checkpoint (the shape it was
    built with, model_args.json), or a path/builtin whose HF config is read (no weights are loaded)."""
    return _resolve(model)[0]


def _resolve(model: str) -> tuple[ModelArgs, dict]:
    """The shape, and the train settings (seq_len, micro_batch_size) of the recipe or run it came from."""
    if model in PRESETS:
        return get_preset(model), {}
    from cptrain.configtools import ConfigError, closest
    from cptrain.models.hf import (
        args_from_hf_config,
        folder_of_model_file,
        load_hf_config,
        resolve_model_path,
    )

    if not model.strip():
        raise ConfigError(f"inspect-model: the model is empty; give {WHAT}")
    path = Path(model).expanduser()
    if not model.startswith("builtin:") and not path.exists():  # a mistyped preset reads as a missing path
        raise ConfigError(f"inspect-model: {model!r} is not a preset name nor an existing path"
                          f"{closest(model, PRESETS)} (presets: {', '.join(PRESETS)})")
    if path.is_file() and path.suffix == ".toml":
        return _recipe_args(path)
    saved = _run_args(path)
    if saved is not None:
        return saved
    folder = folder_of_model_file(path)
    if folder is not None:
        raise ConfigError(f"inspect-model: {model} is one file of a model folder; give the folder: "
                          f"`cptrain inspect-model {folder}`")
    return args_from_hf_config(load_hf_config(resolve_model_path(model))), {}


def _recipe_args(path: Path) -> tuple[ModelArgs, dict]:
    """A recipe's model as the run builds it: its preset or config.json, then model.overrides."""
    from cptrain.config import load_config
    from cptrain.models.build import model_args

    cfg = load_config(path, need_data=False)
    return model_args(cfg.model), {"seq_len": cfg.train.seq_len, "micro_batch_size": cfg.train.micro_batch_size}


_SHAPE_KEYS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim")


def _run_args(path: Path) -> tuple[ModelArgs, dict] | None:
    """A cptrain run folder (or one of its checkpoints/step-N) holds no config.json; its model_args.json is the
    shape the run built, overrides included."""
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    file = run / "model_args.json"
    if not file.is_file():
        return None
    from cptrain.configtools import ConfigError, from_dict, load_toml

    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file} is not valid JSON ({e})") from None
    missing = [k for k in _SHAPE_KEYS if not isinstance(raw, dict) or k not in raw]
    if missing:  # the defaults would describe another model (the debug shape)
        raise ConfigError(f"{file} lacks {', '.join(missing)}; it is not the one cptrain wrote for this run")
    args = from_dict(ModelArgs, raw, "model_args.json")
    train = {}
    if (run / "config.resolved.toml").is_file():
        train = load_toml(run / "config.resolved.toml").get("train", {})
    return args, {k: train[k] for k in ("seq_len", "micro_batch_size") if isinstance(train.get(k), int)}


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


def _loss_work(args: ModelArgs, tokens: int) -> int:
    """The fused loss's buffers for one chunk (ops/chunked_ce.py, the Triton path): the bf16 [rows, vocab] logits,
    d(hidden) rows in fp32 before their scale and the scaled hidden rows (bf16)."""
    from cptrain.ops.chunked_ce import default_chunk_size

    rows = min(tokens, default_chunk_size(args.vocab_size, 2))
    return rows * (2 * args.vocab_size + 6 * args.dim)


def memory_estimate(args: ModelArgs, seq_len: int, micro_batch_size: int) -> dict[str, float]:
    """GiB per GPU with no sharding. States: fp32 master params + fp32 grads + AdamW (2 x fp32) = 16 B/param,
    or bf16 weights, grads and AdamW states (`precision.master_dtype = "bf16"`) = 8 B/param.

    Activations of a bf16 step with compile on (the GPU setting): without checkpointing every block's saved
    tensors, plus the larger of one block's MLP and attention backward working sets, plus the [tokens, dim]
    tensors outside the blocks; with full checkpointing each block keeps only its bf16 input and one block at
    a time holds its saved tensors; with `model.tiled_mlp = "auto"` as well (when it tiles at this length)
    that block's gate/up are gone and its MLP backward works one tile at a time, so the attention backward
    sets the peak. The fused loss's chunk buffers (_loss_work) exist between the last block's forward and the
    first backward, beside whatever the blocks keep then; at short lengths they can set the peak. With the
    states, 0.89-1.11x of every peak measured on one H100 or H200 (1B, 8B, Qwen-7B shapes; 8K-128K tokens;
    with and without checkpointing and tiling)."""
    from cptrain.ops.tiled_mlp import resolve_num_tiles

    n = count_parameters(args)["total"]
    tokens = seq_len * micro_batch_size
    tiles = resolve_num_tiles("auto", seq_len, args.dim, args.ffn_dim, micro_batch_size)
    saved = tokens * (_attention_saved_per_token(args) + _mlp_saved_per_token(args))
    outside = tokens * 2 * 2 * args.dim  # the embedding output and the loss's d(hidden)
    checkpoints = tokens * args.dim * 2 * args.n_layers
    attention_work = tokens * _attention_work_per_token(args)
    work = max(tokens * _mlp_work_per_token(args, 1), attention_work)
    loss = _loss_work(args, tokens)
    tiled = checkpoints + max(tokens * _attention_saved_per_token(args)
                              + max(tokens * _mlp_work_per_token(args, tiles), attention_work), loss)
    return {
        "weights_bf16": 2 * n / GIB,
        "params_grads_adam_fp32": 16 * n / GIB,
        "params_grads_adam_bf16": 8 * n / GIB,
        "activations_no_ckpt": (args.n_layers * saved + max(work, loss) + outside) / GIB,
        "activations_full_ckpt": (checkpoints + max(saved + work, loss) + outside) / GIB,
        # None: auto does not tile at this length, so the line above already holds
        "activations_full_ckpt_tiled": (tiled + outside) / GIB if tiles > 1 else None,
    }


def describe_model(model: str, seq_len: int | None = None, micro_batch_size: int | None = None) -> str:
    """The report; `seq_len` and `micro_batch_size` default to the recipe's or run's train settings, else 8192
    and 1."""
    args, train = _resolve(model)
    args.check()
    seq_len = seq_len or train.get("seq_len", 8192)
    micro_batch_size = micro_batch_size or train.get("micro_batch_size", 1)
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
        f"parameters       {counts['total']:,} ({_short(counts['total'])}); "
        f"non-embedding {counts['non_embedding']:,} ({_short(counts['non_embedding'])})",
        f"memory (GiB)     bf16 weights {_gib(mem['weights_bf16'])}; params+grads+AdamW "
        f"{_gib(mem['params_grads_adam_fp32'])} fp32, {_gib(mem['params_grads_adam_bf16'])} with "
        "precision.master_dtype = \"bf16\" (divide by the FSDP shard count)",
        f"activations      seq {seq_len} x batch {micro_batch_size}: ~{_gib(mem['activations_no_ckpt'])} GiB "
        f"without checkpointing, ~{_gib(mem['activations_full_ckpt'])} GiB with full checkpointing",
    ]
    if mem["activations_full_ckpt_tiled"] is not None:
        lines.append(f"                 ~{_gib(mem['activations_full_ckpt_tiled'])} GiB with full checkpointing and "
                     f"model.tiled_mlp = \"auto\" (about the untiled time under checkpointing)")
    return "\n".join(lines)


def _short(n: int) -> str:
    """135M, 1.24B: a small model's count read as 0.00B said nothing."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _gib(x: float) -> str:
    """One decimal from 1 GiB up, two significant digits below (not 0.0 for a small model's tens of MiB)."""
    return f"{x:.1f}" if x >= 0.95 else f"{x:.2g}"
