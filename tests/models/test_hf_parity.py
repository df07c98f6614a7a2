"""Random transformers models -> cptrain import -> same logits; export -> transformers reload -> same logits."""

import pytest
import torch
import transformers

from cptrain.models.hf import export_hf, load_pretrained

SMALL = dict(vocab_size=311, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)

FAMILIES = {
    "llama3-rope-scaling-untied": ("LlamaConfig", dict(
        rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})),
    "llama-linear-rope-tied": ("LlamaConfig", dict(tie_word_embeddings=True,
                                                   rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama-yarn-rope-untied": ("LlamaConfig", dict(  # the ids (48) run past the original 32 positions
        tie_word_embeddings=False,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})),
    "mistral": ("MistralConfig", dict(tie_word_embeddings=False, sliding_window=None)),
    "qwen2-bias-tied": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3-qknorm": ("Qwen3Config", dict(tie_word_embeddings=False, head_dim=32)),
    "qwen3-qknorm-tied": ("Qwen3Config", dict(tie_word_embeddings=True, head_dim=16)),
}


def _random_hf_model(family: str):
    cls_name, extra = FAMILIES[family]
    config = getattr(transformers, cls_name)(**SMALL, **extra)
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # biases and norms start at 0/1: make them count in the comparison
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_export_roundtrip_logits(family, tmp_path):
    hf = _random_hf_model(family)
    hf.save_pretrained(tmp_path / "src")
    ids = torch.randint(0, SMALL["vocab_size"], (2, 48))
    with torch.no_grad():
        ref = hf(ids).logits

    native = load_pretrained(tmp_path / "src").eval()
    with torch.no_grad():
        ours = native(ids)
    assert (ours - ref).abs().max().item() < 1e-4

    export_hf(native, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(back) is type(hf)
    with torch.no_grad():
        again = back(ids).logits
    assert (again - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("first, second", [("sharded", "single"), ("single", "sharded")])
def test_export_into_an_earlier_export_leaves_no_stale_weights(first, second, tmp_path, monkeypatch):
    """Exporting again into the same folder with the other layout (sharded after single, single after sharded):
    only the new files remain, and transformers loads the new weights."""
    import cptrain.models.hf as hf_mod

    native = load_pretrained(_save(_random_hf_model("mistral"), tmp_path / "src")).eval()
    shard_bytes = {"sharded": 1 << 14, "single": 5 * 1024**3}  # the model is ~0.1 MB
    monkeypatch.setattr(hf_mod, "SHARD_BYTES", shard_bytes[first])
    export_hf(native, tmp_path / "out")
    with torch.no_grad():
        for p in native.parameters():
            p.mul_(0.5)
    monkeypatch.setattr(hf_mod, "SHARD_BYTES", shard_bytes[second])
    export_hf(native, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").glob("model*"))
    if second == "sharded":
        assert len(names) > 2 and all(n.startswith("model-") for n in names[:-1])
        assert names[-1] == "model.safetensors.index.json"
    else:
        assert names == ["model.safetensors"]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (1, 16))
    with torch.no_grad():
        assert (back(ids).logits - native(ids)).abs().max().item() < 1e-4


def _save(model, path):
    model.save_pretrained(path)
    return path
