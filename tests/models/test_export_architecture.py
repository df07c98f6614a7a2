"""Exporting the decoder's attention variants: a Llama-family model with q/k/v biases (`model.overrides`
qkv_bias = true) was written as `llama` with attention_bias = true, which in transformers also means an o_proj
bias: the export lacked that tensor (transformers initialised it and warned) and `load_pretrained` refused the
export it had just written. Each variant now goes out as the architecture with exactly the decoder's
parameters, loads in plain transformers with nothing missing and the same fp32 logits, and imports back to
the same shape and weights; the one combination no architecture expresses is refused naming its keys."""

import dataclasses
import json

import pytest
import torch
import transformers

from cptrain.cli import main
from cptrain.configtools import ConfigError
from cptrain.export import export_state_dict
from cptrain.models.decoder import Decoder
from cptrain.models.hf import export_hf, load_pretrained
from cptrain.models.presets import ModelArgs
from cptrain.train import run
from tests.models.test_export_run import _checkpoint_model
from tests.train.tiny_runs import debug_cfg, make_corpus

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.load in one process

TINY = dict(vocab_size=311, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=256,
            bos_token_id=1, eos_token_id=2)
LLAMA3_ROPE = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}

# (shape, the architecture transformers should build, the family the export imports back as)
VARIANTS = {
    "llama-qkv-bias-untied": (dict(qkv_bias=True), "Qwen2ForCausalLM", "qwen2"),
    "llama-qkv-bias-tied-llama3-rope": (dict(qkv_bias=True, tie_embeddings=True, head_dim=32, n_kv_heads=1,
                                             rope_theta=500000.0, rope_scaling=LLAMA3_ROPE), "Qwen2ForCausalLM",
                                        "qwen2"),
    "mistral-qkv-bias": (dict(qkv_bias=True, family="mistral"), "Qwen2ForCausalLM", "qwen2"),
    "qwen2-qkv-bias": (dict(qkv_bias=True, family="qwen2", tie_embeddings=True), "Qwen2ForCausalLM", "qwen2"),
    # the same rule the other way: a Qwen2 without biases was written with its q/k/v biases missing
    "qwen2-without-bias": (dict(family="qwen2"), "LlamaForCausalLM", "llama"),
    "llama-qk-norm": (dict(qk_norm=True, head_dim=32), "Qwen3ForCausalLM", "qwen3"),
    "qwen3-without-qk-norm": (dict(family="qwen3"), "LlamaForCausalLM", "llama"),
    "llama-plain": (dict(), "LlamaForCausalLM", "llama"),
}


def _random_native(**shape) -> Decoder:
    """A decoder with random weights, and biases and norm weights far from their 0/1 init."""
    torch.manual_seed(5)
    model = Decoder(ModelArgs(**{**TINY, **shape}))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def _load_transformers(path):
    """The export as plain transformers loads it (local files only), with what it found missing or extra."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, local_files_only=True, output_loading_info=True)
    return model.eval(), info


def _without_family(args: ModelArgs) -> dict:
    return {k: v for k, v in dataclasses.asdict(args).items() if k != "family"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_loads_in_transformers_and_imports_back_exactly(variant, tmp_path):
    shape, architecture, family = VARIANTS[variant]
    ours = _random_native(**shape)
    sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("inv_freq")}
    export_state_dict(ours.args, sd, tmp_path / "hf", dtype=torch.float32)

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert not config.get("attention_bias") and config.get("sliding_window") is None
    hf, info = _load_transformers(tmp_path / "hf")
    assert type(hf).__name__ == architecture
    assert not any(info.values()), info  # no tensor missing (initialised by transformers), none left over
    ids = torch.randint(0, TINY["vocab_size"], (2, 48))  # past the llama3 rope's original 32 positions
    with torch.no_grad():
        expected = ours(ids)
        assert (hf(ids).logits - expected).abs().max().item() < 1e-5

    back = load_pretrained(tmp_path / "hf").eval()
    assert back.args.family == family
    if not ours.args.rope_scaling:  # the import's rope dict spells the type twice (type and rope_type)
        assert _without_family(back.args) == _without_family(ours.args)
    assert back.state_dict().keys() == ours.state_dict().keys()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(back(ids), expected)


def test_qkv_bias_with_qk_norm_is_refused_before_the_folder_changes(tmp_path):
    """No transformers architecture has q/k/v biases and qk-norm without an o_proj bias: an export would
    give other logits, so it is refused, and an earlier export in the folder is left as it was."""
    export_hf(_random_native(), tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    model = _random_native(qkv_bias=True, qk_norm=True, family="qwen3")
    with pytest.raises(ConfigError, match=r"qkv_bias = true with qk_norm = true cannot be exported"):
        export_hf(model, tmp_path / "hf")
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before


def test_cli_export_refuses_before_reading_the_checkpoint(tmp_path, capsys):
    """`cptrain export` names the keys from model_args.json without opening the (here empty) shards."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-1").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-1" / "COMMITTED").write_text("")
    args = ModelArgs(**TINY, qkv_bias=True, qk_norm=True)
    (run_dir / "model_args.json").write_text(json.dumps(dataclasses.asdict(args)))
    capsys.readouterr()
    assert main(["export", str(run_dir), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cptrain: error: model: qkv_bias = true with qk_norm = true cannot be exported")
    assert "\n" not in err and not (tmp_path / "hf").exists()


@pytest.fixture(scope="module")
def qkv_bias_run(tmp_path_factory, smollm_tokenizer):
    """The debug preset (family llama) with `model.overrides` qkv_bias = true, trained two steps."""
    run_dir = tmp_path_factory.mktemp("qkv-run")
    corpus = make_corpus(tmp_path_factory, smollm_tokenizer)
    run(debug_cfg(run_dir, corpus, "model.overrides={vocab_size=49152, qkv_bias=true}", "train.steps=2",
                  "checkpoint.every_steps=1", "optim.lr=1e-2", "schedule.warmup_steps=1"))
    return run_dir


def test_cli_export_of_a_qkv_bias_run(qkv_bias_run, tmp_path, capsys):
    """The user's path: train with the override, `cptrain export --dtype fp32`, load in transformers."""
    capsys.readouterr()
    assert main(["export", str(qkv_bias_run), str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    assert "family 'llama' with qkv_bias = true, qk_norm = false is written as Qwen2ForCausalLM" in \
        capsys.readouterr().out
    ours = _checkpoint_model(qkv_bias_run, qkv_bias_run / "checkpoints" / "step-2")
    assert ours.args.family == "llama" and ours.args.qkv_bias
    assert ours.layers["0"].self_attn.q_proj.bias.abs().max().item() > 1e-3  # training moved the biases
    hf, info = _load_transformers(tmp_path / "hf")
    assert type(hf).__name__ == "Qwen2ForCausalLM" and not any(info.values()), info
    ids = torch.randint(0, hf.config.vocab_size, (2, 40))
    with torch.no_grad():
        expected = ours(ids)
        assert (hf(ids).logits - expected).abs().max().item() < 1e-5
        assert torch.equal(load_pretrained(tmp_path / "hf").eval()(ids), expected)
