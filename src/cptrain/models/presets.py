"""Model shapes: the ModelArgs dataclass and named presets of real models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cptrain.configtools import ConfigError


@dataclass
class ModelArgs:
    vocab_size: int = 512
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None  # default dim // n_heads
    ffn_dim: int = 128
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"type": "llama3"|"linear"|"yarn", ...} as in HF configs
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    # llama | mistral | qwen2 | qwen3: the HF class on export where it computes the same logits; qkv_bias
    # alone exports as qwen2, qk_norm alone as qwen3 (cptrain.models.hf.export_family says why)
    family: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None  # Llama 3 Instruct lists several

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    def check(self) -> None:
        """Shape rules the decoder relies on; raises ConfigError naming the field."""
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model: n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ConfigError(f"model: dim={self.dim} must be divisible by n_heads={self.n_heads} "
                              "(or set head_dim)")
        if self.head_size % 2:
            raise ConfigError(f"model: head size {self.head_size} must be even for RoPE")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model: {name}={getattr(self, name)} must be >= 1")

    def replace(self, **changes) -> ModelArgs:
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                from cptrain.configtools import closest

                raise ConfigError(f"unknown model shape key 'model.overrides.{key}'{closest(key, names)}")
        return dataclasses.replace(self, **changes)


_LLAMA3_ROPE = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

PRESETS: dict[str, ModelArgs] = {
    "debug": ModelArgs(),
    "debug-qwen3": ModelArgs(qk_norm=True, head_dim=32, family="qwen3"),
    "smollm2-135m": ModelArgs(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
                              rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
    "llama3.2-1b": ModelArgs(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
                             rope_theta=500000.0, rope_scaling={**_LLAMA3_ROPE, "factor": 32.0},
                             max_seq_len=131072, tie_embeddings=True),
    "llama3.1-8b": ModelArgs(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                             rope_theta=500000.0, rope_scaling=dict(_LLAMA3_ROPE), max_seq_len=131072),
    "mistral-7b": ModelArgs(vocab_size=32768, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                            rope_theta=1000000.0, max_seq_len=32768, family="mistral"),
    "qwen2.5-7b": ModelArgs(vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, ffn_dim=18944,
                            norm_eps=1e-6, rope_theta=1000000.0, max_seq_len=32768, qkv_bias=True,
                            family="qwen2"),
    "qwen3-8b": ModelArgs(vocab_size=151936, dim=4096, n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128,
                          ffn_dim=12288, norm_eps=1e-6, rope_theta=1000000.0, max_seq_len=40960, qk_norm=True,
                          family="qwen3"),
}


def get_preset(name: str) -> ModelArgs:
    if name not in PRESETS:
        from cptrain.configtools import closest

        raise ConfigError(f"unknown model preset {name!r}{closest(name, PRESETS)}; "
                          f"available: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name], rope_scaling=dict(PRESETS[name].rope_scaling or {}) or None)


def count_parameters(args: ModelArgs) -> dict[str, int]:
    """Parameter counts from the shape alone (no model is built)."""
    hd = args.head_size
    attn = args.dim * hd * (args.n_heads * 2 + args.n_kv_heads * 2)
    if args.qkv_bias:
        attn += hd * (args.n_heads + 2 * args.n_kv_heads)
    if args.qk_norm:
        attn += 2 * hd
    mlp = 3 * args.dim * args.ffn_dim
    block = attn + mlp + 2 * args.dim
    embed = args.vocab_size * args.dim
    head = 0 if args.tie_embeddings else embed
    total = embed + head + args.n_layers * block + args.dim
    return {"total": total, "embedding": embed, "lm_head": head, "non_embedding": total - embed - head,
            "per_block": block}

