"""Settings refused once the model, optimizer or metrics logger is built (a freeze pattern that matches nothing,
the Triton AdamW on a CPU, a logger whose package is missing, an end-of-run export no HF architecture
expresses) are refused before the run folder is made: no
half-made folder is left behind, and an existing run's folder is left as it was (CPU, the debug preset)."""

import sys
from pathlib import Path

import pytest

from cptrain.configtools import ConfigError
from cptrain.train import run
from tests.train.tiny_runs import debug_cfg, make_corpus

BAD_SETTINGS = [
    pytest.param(("optim.freeze=['encoder.*']",), r"optim.freeze patterns \['encoder.\*'\] match no parameter",
                 id="freeze-matches-nothing"),
    pytest.param(("optim.freeze=['*']",), r"no trainable parameters: optim.freeze = \['\*'\] froze everything",
                 id="freeze-matches-everything"),
    pytest.param(("optim.fused='triton'", "train.device='cpu'"), "optim.fused='triton' needs a CUDA device",
                 id="triton-on-cpu"),
    pytest.param(("logging.tensorboard=true",), "logging.tensorboard = true needs the tensorboard package",
                 id="tensorboard-missing"),
    pytest.param(("logging.wandb_project='proj'",), "logging.wandb_project = 'proj' needs the wandb package",
                 id="wandb-missing"),
    pytest.param(("train.export_hf=true", "model.overrides={vocab_size=49152, qkv_bias=true, qk_norm=true}"),
                 "qkv_bias = true with qk_norm = true cannot be exported", id="export-hf-inexpressible"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, smollm_tokenizer):
    return make_corpus(tmp_path_factory, smollm_tokenizer)


@pytest.fixture(autouse=True)
def _no_logger_packages(monkeypatch):
    """As on a machine without tensorboard, wandb and the Triton interpreter."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*"))}


@pytest.mark.parametrize("extra, message", BAD_SETTINGS)
def test_a_bad_setting_leaves_no_run_folder(tmp_path, corpus, extra, message):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run(debug_cfg(run_dir, corpus, *extra))
    assert not run_dir.exists()


@pytest.mark.parametrize("extra, message", BAD_SETTINGS)
def test_a_bad_setting_leaves_an_existing_run_folder_as_it_was(tmp_path, corpus, extra, message):
    """An earlier run without checkpoints (a fresh start would rename its metrics.jsonl) and an empty folder."""
    run_dir = tmp_path / "run"
    run(debug_cfg(run_dir, corpus, "train.steps=1", "checkpoint.every_steps=0", "checkpoint.save_final=false",
                  "eval.max_batches=1"))
    (run_dir / "notes").mkdir()
    before = _snapshot(run_dir)
    with pytest.raises(ConfigError, match=message):
        run(debug_cfg(run_dir, corpus, *extra))
    assert _snapshot(run_dir) == before


def test_a_tied_lm_head_pattern_is_refused_before_the_run_folder_with_the_pattern_that_works(tmp_path, corpus):
    run_dir = tmp_path / "run"
    tied = "model.overrides={vocab_size=49152, tie_embeddings=true}"
    with pytest.raises(ConfigError, match=r"'lm_head.\*': lm_head.weight is tied to embed_tokens.weight .*"
                                          r"freeze it as 'embed_tokens.weight'"):
        run(debug_cfg(run_dir, corpus, tied, "optim.freeze=['lm_head.*']"))
    assert not run_dir.exists()
