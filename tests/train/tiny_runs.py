"""A tiny real training setup shared by the run-folder tests: stdlib files as text documents, the real
SmolLM2 tokenizer, the debug preset on CPU."""

import shutil
import sysconfig
from pathlib import Path

from cptrain.config import load_config


def make_corpus(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    """40 real stdlib files as .txt documents, and the tokenizer saved where a recipe can find it."""
    root = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(stdlib.glob("*.py"))[:40]:
        shutil.copy(f, root / (f.stem + ".txt"))
    tok_dir = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(tok_dir)
    return root, tok_dir


def debug_cfg(run_dir, corpus, *extra):
    """6 steps of the debug preset, a checkpoint every 3, one eval batch; `extra` overrides win."""
    root, tok = corpus
    return load_config(None, [
        "model.preset=debug", "model.init=random", f"model.tokenizer='{tok}'", "model.overrides={vocab_size=49152}",
        f"data.sources=[{{path='{root}', format='txt'}}]", "data.eval_fraction=0.1",
        "precision.param_dtype=fp32", "train.steps=6", "train.seq_len=64", "train.micro_batch_size=2",
        "train.global_batch_size=4", f"train.run_dir='{run_dir}'", "checkpoint.every_steps=3",
        "eval.max_batches=1", "eval.sample_tokens=2", "schedule.warmup_steps=2", "optim.lr=3e-3", *extra])
