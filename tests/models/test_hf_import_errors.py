"""Importing local HF directories: what the decoder cannot express is refused with one line naming the file
and key (not loaded with other logits, not a traceback from inside transformers or load_state_dict); what it
can express (storage variants, configs that merely mention an unused sliding window) loads with transformers'
logits."""

import json

import pytest
import torch
import transformers

from cptrain.cli import main
from cptrain.configtools import ConfigError
from cptrain.models.hf import export_hf, load_pretrained, load_tokenizer

SMALL = dict(vocab_size=311, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def _save_hf(path, cls_name: str, dtype=torch.float32, **extra):
    """A random transformers model of the given config class, saved as safetensors; returns the model (fp32)."""
    config = getattr(transformers, cls_name)(**SMALL, **extra)
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # norms and biases start at 1/0: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        model.to(dtype).save_pretrained(path, max_shard_size="40KB")
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _edit_config(path, **changes):
    file = path / "config.json"
    d = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            d.pop(key, None)
        else:
            d[key] = value
    file.write_text(json.dumps(d))


def _max_logit_diff(hf, native, length: int = 96) -> float:
    ids = torch.randint(0, SMALL["vocab_size"], (2, length))
    with torch.no_grad():
        return (hf(ids).logits - native(ids)).abs().max().item()


@pytest.mark.parametrize("cls_name, extra, match", [
    # these loaded without error before and gave other logits than transformers on rows past the window
    ("MistralConfig", dict(sliding_window=16), r"config\.json: sliding_window = 16 .*not supported"),
    ("Qwen2Config", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1),
     r"config\.json: sliding_window = 16 .*not supported"),
    ("LlamaConfig", dict(hidden_act="gelu"), r"config\.json: hidden_act = 'gelu' is not supported"),
    # these failed before, but naming the model's tensors or `model.rope_scaling`, not the file and key
    ("LlamaConfig", dict(attention_bias=True), r"config\.json: attention_bias = true is not supported"),
    ("LlamaConfig", dict(mlp_bias=True), r"config\.json: mlp_bias = true is not supported"),
    ("LlamaConfig", dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
     r"config\.json: rope_scaling type 'dynamic' is not supported \(default, linear, llama3, yarn\)"),
])
def test_unsupported_settings_name_the_file_and_key(cls_name, extra, match, tmp_path):
    _save_hf(tmp_path, cls_name, **extra)
    with pytest.raises(ConfigError, match=match):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("change, match", [
    # transformers would fill a missing shape key with its class default (11008 for Llama's MLP): the
    # load then died in load_state_dict with a size-mismatch traceback
    (dict(intermediate_size=None), r"config\.json lacks intermediate_size"),
    (dict(vocab_size=None), r"config\.json lacks vocab_size"),
    (dict(model_type=None), r"config\.json lacks model_type"),
    (dict(model_type="gpt2"), r"config\.json: model_type = 'gpt2' .* is not supported"),
    # a config that does not fit the weights: a RuntimeError from load_state_dict before
    (dict(intermediate_size=128), r"'model\.layers\.\d\.mlp\.\w+_proj\.weight' has shape \(\d+, \d+\) but "
                                  r"the config gives \((64, 128|128, 64)\)"),
])
def test_broken_config_is_one_clear_error(change, match, tmp_path):
    _save_hf(tmp_path, "LlamaConfig")
    _edit_config(tmp_path, **change)
    with pytest.raises(ConfigError, match=match):
        load_pretrained(tmp_path)


def test_invalid_json_names_the_file(tmp_path, capsys):
    _save_hf(tmp_path, "LlamaConfig")
    (tmp_path / "config.json").write_text('{"model_type": "llama",')  # truncated by a failed copy
    capsys.readouterr()
    assert main(["inspect-model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cptrain: error: {tmp_path / 'config.json'} is not valid JSON") and "\n" not in err


def test_generate_from_a_directory_without_tokenizer(tmp_path, capsys):
    """`model.save_pretrained` alone writes no tokenizer: transformers' AutoTokenizer then raised a ValueError
    about slow tokenizers and sentencepiece from deep inside its converters."""
    _save_hf(tmp_path, "LlamaConfig")
    capsys.readouterr()
    assert main(["generate", str(tmp_path), "def parse(", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cptrain: error: {tmp_path} holds no tokenizer") and "\n" not in err


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(ConfigError, match=r"unknown built-in model 'builtin:smollm3'; built-in models: "
                                          r"builtin:smollm2-135m"):
        load_tokenizer("builtin:smollm3")


@pytest.mark.parametrize("cls_name, extra", [
    # Qwen2.5 configs carry a sliding_window value with use_sliding_window = false: no window in effect
    ("Qwen2Config", dict(use_sliding_window=False, sliding_window=16, tie_word_embeddings=True)),
    # a window as long as the context never limits anything
    ("MistralConfig", dict(sliding_window=256)),
])
def test_unused_sliding_window_still_loads(cls_name, extra, tmp_path):
    hf = _save_hf(tmp_path, cls_name, **extra)
    assert _max_logit_diff(hf, load_pretrained(tmp_path).eval()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sharded_half_precision_checkpoint_loads_exactly(dtype, tmp_path):
    """Sharded safetensors (index + many files) in bf16/fp16: cptrain's fp32 model equals transformers'."""
    hf = _save_hf(tmp_path, "Qwen3Config", dtype=dtype, head_dim=32)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    assert _max_logit_diff(hf, load_pretrained(tmp_path).eval()) < 1e-4


def test_eos_token_list_survives_export(tmp_path):
    """Llama 3 Instruct configs list three eos ids; the export kept only the first, so transformers'
    `generate` on the exported model ran past <|eot_id|>."""
    _save_hf(tmp_path / "src", "LlamaConfig", bos_token_id=1, eos_token_id=[2, 7, 9])
    export_hf(load_pretrained(tmp_path / "src"), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eos_token_id"] == [2, 7, 9] and config["bos_token_id"] == 1


def _cut_short(file, keep: int) -> None:
    file.write_bytes(file.read_bytes()[:keep])


@pytest.mark.parametrize("damage, match", [
    # a SafetensorError traceback ("incomplete metadata, file not fully covered") from inside safetensors
    (lambda d: _cut_short(sorted(d.glob("model-*.safetensors"))[1], 1000),
     r"model-00002-of-\d{5}\.safetensors cannot be read as safetensors \(.*\); the file may be cut short"),
    # a FileNotFoundError traceback naming the shard but not the index that lists it
    (lambda d: sorted(d.glob("model-*.safetensors"))[0].unlink(),
     r"model\.safetensors\.index\.json lists 1 weight file\(s\) missing from .*, e\.g\. model-00001-of-\d{5}"
     r"\.safetensors; copy or download them too"),
    (lambda d: (d / "model.safetensors.index.json").write_text('{"metadata": {}}'),
     r"model\.safetensors\.index\.json is not a safetensors index \(a JSON object with a weight_map\)"),
], ids=["shard-cut-short", "shard-missing", "index-without-weight-map"])
def test_damaged_weight_files_name_the_file(damage, match, tmp_path, capsys):
    _save_hf(tmp_path, "LlamaConfig")
    damage(tmp_path)
    with pytest.raises(ConfigError, match=match):
        load_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")  # `generate` checks for a tokenizer first
    capsys.readouterr()
    assert main(["generate", str(tmp_path), "def parse(", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cptrain: error: {tmp_path}") and "\n" not in err, err


@pytest.mark.parametrize("make", ["not-gguf", "cut-in-metadata", "cut-in-tensors"])
def test_damaged_gguf_is_one_line_naming_the_file(make, tmp_path, capsys):
    """A file that is not GGUF, or the SmolLM2 GGUF cut short: ValueError / struct.error tracebacks from inside
    transformers' GGUF reader, from the tokenizer, the config or the weights, whichever came first."""
    from cptrain.models.hf import resolve_model_path

    real = resolve_model_path("builtin:smollm2-135m")
    bad = tmp_path / "model.gguf"
    if make == "not-gguf":
        bad.write_text("<html>404 Not Found</html>")
    else:
        with real.open("rb") as f:
            bad.write_bytes(f.read(1_000_000 if make == "cut-in-metadata" else 40_000_000))
    for load in (load_pretrained, load_tokenizer):
        with pytest.raises(ConfigError, match=rf"^{bad}: transformers cannot read it as a GGUF model \(.+\); check "
                                              "that the file is complete"):
            load(bad)
    capsys.readouterr()
    assert main(["inspect-model", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cptrain: error: {bad}: transformers cannot read it") and "\n" not in err, err
