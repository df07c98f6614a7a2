"""`cptrain export` on a real run folder: a tiny HF directory imported through `model.path`, trained two steps
on CPU, exported from the run folder and from a step folder, and read back by transformers with the same
logits; OUT_DIR and RUN_DIR_OR_STEP mistakes are one-line errors that leave the run folder untouched."""

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
import transformers

from cptrain.cli import main
from cptrain.config import load_config
from cptrain.models.decoder import Decoder
from cptrain.models.hf import tie_weights
from cptrain.models.presets import ModelArgs
from cptrain.train import run
from tests.train.tiny_runs import make_corpus

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.load in one process


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory, smollm_tokenizer):
    """A tiny tied Qwen3 (qk-norm, yarn RoPE) with the real SmolLM2 tokenizer and no bos/eos ids in its
    config, as a random-init `save_pretrained` writes it."""
    config = transformers.Qwen3Config(
        vocab_size=len(smollm_tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("hf-src")
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smollm_tokenizer, hf_source):
    """Two training steps from `hf_source`, a committed checkpoint after each."""
    root, _ = make_corpus(tmp_path_factory, smollm_tokenizer)
    out = tmp_path_factory.mktemp("run")
    run(load_config(None, [
        f"model.path='{hf_source}'", f"data.sources=[{{path='{root}', format='txt'}}]", "data.eval_fraction=0.1",
        "precision.param_dtype=fp32", "train.steps=2", "train.seq_len=64", "train.micro_batch_size=2",
        "train.global_batch_size=2", f"train.run_dir='{out}'", "checkpoint.every_steps=1",
        "eval.max_batches=1", "eval.sample_tokens=1", "schedule.warmup_steps=1", "optim.lr=1e-2"]))
    return out


def _checkpoint_model(run_dir, step_dir) -> Decoder:
    """The native decoder with a committed step's weights, read the way export reads them."""
    args = ModelArgs(**json.loads((run_dir / "model_args.json").read_text()))
    model = Decoder(args)
    tie_weights(model)
    sd = {k: v for k, v in model.state_dict().items() if not (args.tie_embeddings and k == "lm_head.weight")}
    dcp.load({"model": sd}, checkpoint_id=str(step_dir / "model"))
    model.load_state_dict(sd, strict=False)
    return model.eval()


def test_round_trip_import_train_export_matches_transformers(run_dir, hf_source, tmp_path):
    assert main(["export", str(run_dir), str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(back).__name__ == "Qwen3ForCausalLM" and back.config.tie_word_embeddings
    ids = tok("def parse(text):\n    return text.split()\n" * 6, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 64  # past yarn's original context
    ours = _checkpoint_model(run_dir, run_dir / "checkpoints" / "step-2")
    before = transformers.AutoModelForCausalLM.from_pretrained(hf_source, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = back(ids).logits
        assert (logits - ours(ids)).abs().max().item() < 1e-4
        assert (logits - before(ids).logits).abs().max().item() > 1e-3  # the training really changed it


def test_export_config_takes_special_tokens_from_the_tokenizer(run_dir, smollm_tokenizer, tmp_path):
    """The source config had no bos/eos ids: the export wrote null for both, so transformers' `generate` on the
    exported model never stopped at the tokenizer's end-of-text."""
    assert main(["export", str(run_dir), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == smollm_tokenizer.eos_token_id is not None
    assert config["bos_token_id"] == smollm_tokenizer.bos_token_id


def test_export_writes_generation_config_and_generates(run_dir, smollm_tokenizer, tmp_path):
    """transformers' save_pretrained writes generation_config.json beside config.json (serving tools read their
    stop ids from it); the export wrote none. The exported tokenizer and model generate together."""
    assert main(["export", str(run_dir), str(tmp_path / "hf")]) == 0
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == smollm_tokenizer.eos_token_id and gen["bos_token_id"] == smollm_tokenizer.bos_token_id
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert model.dtype == torch.bfloat16 and json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] \
        == "bfloat16"
    ids = tok("def parse(text):", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= ids["input_ids"].shape[1] + 4 and isinstance(tok.decode(out[0]), str)


def test_export_from_a_relative_step_folder(run_dir, tmp_path, monkeypatch):
    """`cd run/checkpoints && cptrain export step-1 OUT` looked for the run folder two levels above the
    relative path `step-1` (the current directory's parent) and said model_args.json was missing."""
    monkeypatch.chdir(run_dir / "checkpoints")
    assert main(["export", "step-1", str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, back.config.vocab_size, (1, 24))
    with torch.no_grad():
        ours = _checkpoint_model(run_dir, run_dir / "checkpoints" / "step-1")(ids)
        assert (back(ids).logits - ours).abs().max().item() < 1e-4


@pytest.mark.parametrize("source, out, expected", [
    ("{run}/checkpoints/step-9", "{tmp}/hf", "{run}/checkpoints/step-9 is not a committed checkpoint (no "
                                             "COMMITTED marker: its save did not finish); committed: step-1, "
                                             "step-2"),
    ("{tmp}/no-such-run", "{tmp}/hf", "{tmp}/no-such-run: no such file or directory"),
    ("{run}", "{tmp}/a-file", "export OUT_DIR {tmp}/a-file is a file"),
    ("{run}", "{run}", "export OUT_DIR {run} is a run folder or inside its checkpoints"),
    ("{run}/checkpoints/step-2", "{run}/checkpoints/step-2", "export OUT_DIR {run}/checkpoints/step-2 is a run "
                                                             "folder or inside its checkpoints"),
    # a NotADirectoryError traceback from mkdir, after the checkpoint had been read
    ("{run}", "{tmp}/a-file/hf", "export OUT_DIR {tmp}/a-file/hf: {tmp}/a-file is a file, so the folder cannot "
                                 "be created; give a directory path"),
])
def test_bad_paths_are_one_line_errors(run_dir, tmp_path, capsys, source, out, expected):
    """Each was a traceback (OUT a file), a misleading message, or an export written into the run folder (a
    config.json there makes `cptrain generate RUN` take the run folder for a model)."""
    (tmp_path / "a-file").write_text("notes")
    (run_dir / "checkpoints" / "step-9").mkdir(exist_ok=True)  # a save that never finished
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    fill = dict(run=run_dir, tmp=tmp_path)
    capsys.readouterr()
    try:
        assert main(["export", source.format(**fill), out.format(**fill)]) == 2
        assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    finally:
        (run_dir / "checkpoints" / "step-9").rmdir()
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cptrain: error: {expected.format(**fill)}") and "\n" not in err, err


def test_exported_weights_are_as_readable_as_the_config(run_dir, tmp_path):
    """safetensors 0.8 writes model.safetensors through a temporary file created 0600 whatever the umask, so the
    exported model was unreadable to a group that could read its config.json (a shared cluster's eval jobs)."""
    import os

    old = os.umask(0o022)
    try:
        assert main(["export", str(run_dir), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    weights = (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777
    assert weights == (tmp_path / "hf" / "config.json").stat().st_mode & 0o777 == 0o644


def test_non_empty_out_dir_is_refused_unless_overwrite(run_dir, tmp_path, capsys):
    """Exporting into a folder that held files overwrote them without a word: a project's config.json, or the
    pretrained model the run started from. It is refused now, untouched; --overwrite replaces an earlier export
    (files of other names stay)."""
    out = tmp_path / "models"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["export", str(run_dir), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cptrain: error: export OUT_DIR {out} is not empty (it holds config.json, notes.txt); give a "
                   "new or empty folder, or add --overwrite to replace an earlier export there"), err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    assert (out / "config.json").read_text() == '{"mine": true}'

    assert main(["export", str(run_dir), str(out), "--overwrite", "--dtype", "fp32"]) == 0
    assert (out / "notes.txt").read_text() == "keep"
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, back.config.vocab_size, (1, 16))
    with torch.no_grad():
        ours = _checkpoint_model(run_dir, run_dir / "checkpoints" / "step-2")(ids)
        assert (back(ids).logits - ours).abs().max().item() < 1e-4


def _without_dac_override() -> list[str] | None:
    """A command prefix that runs a subprocess without root's permission bypass (root ignores a folder's mode
    bits), or [] when not root; None when that cannot be done here."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else None


@pytest.mark.parametrize("sub", ["", "hf"])
def test_read_only_out_dir_is_one_line_before_the_checkpoint_is_read(run_dir, tmp_path, sub):
    """A read-only OUT (or parent of a new OUT) failed with a PermissionError or SafetensorError traceback at the
    first write, after the whole checkpoint had been read."""
    import subprocess
    import sys

    prefix = _without_dac_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: a folder's mode bits do not apply")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out = locked / sub if sub else locked
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "cptrain.cli", "export", str(run_dir), str(out)],
                              capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"cptrain: error: export OUT_DIR {out}: {locked} is not writable (permission "
                                   "denied); give a folder you can write to"), done.stderr
    assert list(locked.iterdir()) == []
