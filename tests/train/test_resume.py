"""Stop at step k, resume: the losses equal an uninterrupted run's, bitwise (CPU, fp32)."""

import json
from pathlib import Path

import pytest

from cptrain.train import run
from tests.train.tiny_runs import debug_cfg as _cfg
from tests.train.tiny_runs import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, smollm_tokenizer):
    return make_corpus(tmp_path_factory, smollm_tokenizer)


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


@pytest.mark.parametrize("master", ["fp32", "bf16"])
def test_resume_is_bitwise_identical(tmp_path, corpus, master):
    opt = f"precision.master_dtype={master}"  # bf16: weights and AdamW moments saved and restored in bf16
    full = tmp_path / "full"
    run(_cfg(full, corpus, opt))
    resumed = tmp_path / "resumed"
    assert run(_cfg(resumed, corpus, opt, "train.stop_at_step=4")) == {"stopped_at": 4}
    assert (resumed / "checkpoints" / "step-4" / "COMMITTED").is_file()
    run(_cfg(resumed, corpus, opt))
    a, b = _losses(full), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]  # exact float equality
    summary = json.loads((resumed / "report" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["after"]["loss"] < summary["before"]["loss"]
    assert (summary["before"]["step"], summary["after"]["step"]) == (4, 6)  # "before" is the resume's
    assert summary["optimizer"] == "AdamW (torch foreach)"  # CPU: the foreach kernel


def test_export_cli_loads_in_transformers(tmp_path, corpus):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptrain.cli import main
    from cptrain.models.hf import load_pretrained

    run_dir = tmp_path / "run"
    run(_cfg(run_dir, corpus, "train.steps=2", "checkpoint.every_steps=0"))
    assert main(["export", str(run_dir), str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok("def f(x):\n    return x + 1\n", return_tensors="pt")["input_ids"]
    native = load_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert (hf(ids).logits - native(ids)).abs().max() < 1e-4
    assert hf.config.vocab_size == 49152 and hf.config.num_hidden_layers == 2


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, corpus):
    """A pre-emption signal mid-run (steps are queued one ahead of their read-back): the run stops soon after,
    with a committed checkpoint at the step it reports and metrics up to that step."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir, corpus, "train.steps=2000", "checkpoint.every_steps=0", "eval.every_steps=0")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(cfg.to_toml())
    proc = subprocess.Popen([sys.executable, "-m", "cptrain.cli", "run", str(recipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(_losses(run_dir)) >= 3) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    signalled_after = max(_losses(run_dir))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    stopped = max(_losses(run_dir))
    assert signalled_after < stopped < 2000, (signalled_after, stopped)
    assert sorted(_losses(run_dir)) == list(range(1, stopped + 1))
    assert (run_dir / "checkpoints" / f"step-{stopped}" / "COMMITTED").is_file(), out
    assert f"checkpoint saved at step {stopped}" in out
