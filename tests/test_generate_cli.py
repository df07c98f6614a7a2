"""`cptrain generate` on a real exported folder (a tiny random decoder with the real SmolLM2 tokenizer): where it
stops, how it treats the model's context, and the one-line errors for what is not a model."""

import json

import pytest
import torch

from cptrain.cli import main
from cptrain.models.decoder import Decoder
from cptrain.models.hf import export_hf
from cptrain.models.presets import ModelArgs

PROMPT = "def parse(path):\n"


def _export(folder, smollm_tokenizer, max_seq_len=64):
    torch.manual_seed(0)
    model = Decoder(ModelArgs(vocab_size=49152, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                              max_seq_len=max_seq_len))
    model.init_weights(std=0.5)
    return export_hf(model, folder, tokenizer=smollm_tokenizer, dtype=torch.float32), model.eval()


@torch.no_grad()
def _greedy_ids(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids


def _generate(folder, prompt, n, capsys):
    assert main(["generate", str(folder), prompt, "--max-new-tokens", str(n)]) == 0
    return capsys.readouterr()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, smollm_tokenizer):
    return _export(tmp_path_factory.mktemp("gen") / "hf", smollm_tokenizer)


def _set_eos(file, ids):
    raw = json.loads(file.read_text())
    raw["eos_token_id"] = ids
    file.write_text(json.dumps(raw))


@pytest.mark.parametrize("file", ["config.json", "generation_config.json"])
def test_generate_stops_at_every_eos_id_of_the_model(file, exported, smollm_tokenizer, tmp_path, capsys):
    """Llama 3 Instruct's config.json lists three eos ids, Qwen2.5 Instruct's generation_config.json adds one to
    its tokenizer's: transformers' `generate` stops at any of them, and so must `cptrain generate` (it stopped
    only at the tokenizer's eos token and ran on past the end of the answer)."""
    source, model = exported
    prompt = smollm_tokenizer(PROMPT)["input_ids"]
    ids = _greedy_ids(model, prompt, 6)
    assert smollm_tokenizer.eos_token_id not in ids[len(prompt):]
    assert _generate(source, PROMPT, 6, capsys).out == smollm_tokenizer.decode(ids) + "\n"
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in source.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    _set_eos(folder / file, [smollm_tokenizer.eos_token_id, ids[len(prompt)]])
    assert _generate(folder, PROMPT, 6, capsys).out == smollm_tokenizer.decode(ids[:len(prompt) + 1]) + "\n"


def test_a_prompt_that_fills_the_context_is_refused(tmp_path, smollm_tokenizer, capsys):
    folder, _ = _export(tmp_path / "hf", smollm_tokenizer, max_seq_len=16)
    long = "x = 1\n" * 12
    n = len(smollm_tokenizer(long)["input_ids"])
    assert n >= 16
    assert main(["generate", str(folder), long]) == 2
    assert (f"the prompt is {n} tokens, and the model's context (max_position_embeddings) is 16: shorten the "
            "prompt") in capsys.readouterr().err


def test_the_continuation_ends_at_the_context(tmp_path, smollm_tokenizer, capsys):
    """Without a KV cache or position limit the decoder would go on past max_position_embeddings, where its
    RoPE positions were never trained; it stops there and says so."""
    folder, model = _export(tmp_path / "hf", smollm_tokenizer, max_seq_len=16)
    prompt = smollm_tokenizer(PROMPT)["input_ids"]
    n = len(prompt)
    ids = _greedy_ids(model, prompt, 16 - n)
    assert smollm_tokenizer.eos_token_id not in ids[n:]
    captured = _generate(folder, PROMPT, 40, capsys)
    assert captured.out == smollm_tokenizer.decode(ids) + "\n"
    assert f"the prompt is {n} tokens, so {16 - n} new ones fill the model's context of 16" in captured.err


@pytest.mark.parametrize("model, message", [
    ("", "generate: the model is empty; give an HF directory"),
    ("smollm2-135m", "generate: 'smollm2-135m' is a preset, a shape without weights (its weights: "
                     "builtin:smollm2-135m)"),
    ("no/such/folder", "generate: no model at 'no/such/folder' (no such file or directory); give an HF directory"),
])
def test_generate_names_what_is_not_a_model(model, message, capsys):
    """These read "model.path = ...", a recipe key the command line never had, or "." for an empty name."""
    assert main(["generate", model, "def "]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cptrain: error: ") and message in err and "model.path" not in err


def test_generate_on_a_file_of_a_model_folder_names_the_folder(exported, capsys):
    folder, _ = exported
    assert main(["generate", str(folder / "model.safetensors"), "def "]) == 2
    assert f"one file of a model folder; give the folder: `cptrain generate {folder} PROMPT`" in (
        capsys.readouterr().err)
