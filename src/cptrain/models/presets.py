"""Model shapes: the ModelArgs dataclass and named presets of real models."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cptrain.configtools import ConfigError, closest


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

    def __post_init__(self):
        # HF configs spell the scaling type `rope_type` (older ones `type`); export and inspect read `type`
        s = self.rope_scaling
        if isinstance(s, dict) and "type" not in s and "rope_type" in s:
            self.rope_scaling = {**s, "type": s["rope_type"]}

    def check(self) -> None:
        """Shape rules the decoder relies on; raises ConfigError naming the field."""
        broken = next(self.broken_rules(), None)
        if broken is not None:
            raise ConfigError(f"model: {broken[1]}")

    def broken_rules(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """Each shape rule this shape breaks: (the fields the rule reads, why). The fields let config
        validation blame the `model.overrides` key at fault, and check overrides on a model whose other
        fields are read from its config.json only at run time (a rule that reads overridden fields alone)."""
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) < 1:  # first: the rules below divide by these
                yield (name,), f"{name}={getattr(self, name)} must be >= 1"
        if self.head_dim is not None and self.head_dim < 1:
            yield ("head_dim",), f"head_dim={self.head_dim} must be >= 1 (leave it out for dim // n_heads)"
        if self.n_heads >= 1 and self.n_kv_heads >= 1 and self.n_heads % self.n_kv_heads:
            yield ("n_heads", "n_kv_heads"), (f"n_heads={self.n_heads} must be divisible by "
                                              f"n_kv_heads={self.n_kv_heads}")
        size = ("head_dim", "dim", "n_heads")
        if self.head_dim is None and self.n_heads >= 1 and self.dim % self.n_heads:
            yield size, f"dim={self.dim} must be divisible by n_heads={self.n_heads} (or set head_dim)"
        elif self.n_heads >= 1 and self.head_size % 2:
            yield size, f"head size {self.head_size} must be even for RoPE"
        if self.rope_theta <= 0:
            yield ("rope_theta",), f"rope_theta={self.rope_theta:g} must be > 0"
        why = rope_scaling_problem(self.rope_scaling)
        if why:
            yield ("rope_scaling",), why

    def replace(self, **changes) -> ModelArgs:
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                raise ConfigError(f"unknown model shape key 'model.overrides.{key}'{closest(key, names)}")
        return dataclasses.replace(self, **changes)


# The scaling rules models/rope.py implements: for each type, the sub-keys it needs and those it may take.
# llama3 needs all four, as transformers does (an exported run must load there); yarn's
# original_max_position_embeddings defaults to max_seq_len, here as in transformers
ROPE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor",), ("original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                          "mscale", "mscale_all_dim", "truncate")),
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_POSITIVE = (lambda v: _number(v) and v > 0, "a number > 0")
_ANY_NUMBER = (_number, "a number")
_ROPE_VALUES = {
    "factor": (lambda v: _number(v) and v >= 1, "a number >= 1 (the context extension ratio)"),
    "low_freq_factor": _POSITIVE,
    "high_freq_factor": _POSITIVE,
    "original_max_position_embeddings": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                                         "an integer >= 1 (the context length before scaling)"),
    "beta_fast": _POSITIVE,
    "beta_slow": _POSITIVE,
    "attention_factor": _POSITIVE,
    "mscale": _ANY_NUMBER,
    "mscale_all_dim": _ANY_NUMBER,
    "truncate": (lambda v: isinstance(v, bool), "true or false"),
}


def rope_scaling_problem(scaling: dict | None) -> str | None:
    """Why models/rope.py cannot use `scaling` (a missing or unknown sub-key, a value out of range), or None.
    Checked with the shape, so that an override or a config.json is refused naming the sub-key instead of
    failing with a KeyError or a division by zero once the model is built, or training with an unknown
    type's or a misspelt sub-key's scaling silently left out."""
    if not scaling:
        return None
    kinds = [scaling[k] for k in ("type", "rope_type") if k in scaling]
    if not kinds:
        return f"rope_scaling needs a type: one of {', '.join(ROPE_TYPES)}"
    kind = kinds[0]
    if any(k != kind for k in kinds):
        return f"rope_scaling type {kind!r} and rope_type {kinds[1]!r} differ"
    if not isinstance(kind, str) or kind not in ROPE_TYPES:
        near = closest(kind, ROPE_TYPES) if isinstance(kind, str) else ""
        return f"rope_scaling type {kind!r} is not supported (use one of {', '.join(ROPE_TYPES)}){near}"
    required, optional = ROPE_TYPES[kind]
    for key in required:
        if key not in scaling:
            return f"rope_scaling type {kind!r} needs rope_scaling.{key}: {_ROPE_VALUES[key][1]}"
    allowed = ("type", "rope_type", *required, *optional)
    for key, value in scaling.items():
        if key not in allowed:
            return (f"rope_scaling.{key} is not a key of type {kind!r}{closest(key, allowed)} "
                    f"(it takes {', '.join(allowed)})")
        ok, what = _ROPE_VALUES.get(key, (None, ""))
        if ok is not None and not ok(value):
            return f"rope_scaling.{key} must be {what}, got {value!r}"
    return None


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

