"""`cptrain export`: a run folder or committed checkpoint -> Hugging Face directory.

Reads DCP shards without a process group, so export runs on any machine with enough host memory,
whatever topology wrote the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cptrain.checkpoint import MARKER, committed_steps
from cptrain.configtools import ConfigError
from cptrain.models.decoder import Decoder
from cptrain.models.hf import export_hf
from cptrain.models.presets import ModelArgs

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def export_state_dict(args: ModelArgs, state_dict: dict, out: Path, tokenizer=None,
                      dtype: torch.dtype = torch.bfloat16) -> Path:
    with torch.device("meta"):
        model = Decoder(args)
    model.to_empty(device="cpu")
    if args.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    model.load_state_dict(state_dict, strict=False)
    missing = set(model.state_dict()) - set(state_dict) - {"lm_head.weight" if args.tie_embeddings else ""}
    if missing:
        raise ConfigError(f"state dict lacks {sorted(missing)[:3]}...")
    return export_hf(model, out, tokenizer, dtype=dtype)


def _locate(path: Path) -> tuple[Path, Path]:
    """(run folder, committed step folder) from either of them."""
    if (path / MARKER).is_file():
        return path.parent.parent, path
    steps = committed_steps(path / "checkpoints")
    if not steps:
        raise ConfigError(f"{path}: neither a committed checkpoint (no {MARKER}) nor a run folder with one")
    return path, steps[-1]


def export_run(path: str, out: str, dtype: str = "bf16") -> Path:
    import torch.distributed.checkpoint as dcp
    from transformers import AutoTokenizer

    run_dir, step_dir = _locate(Path(path))
    info = run_dir / "model_args.json"
    if not info.is_file():
        raise ConfigError(f"{info} is missing: export needs the run folder the checkpoint belongs to")
    args = ModelArgs(**json.loads(info.read_text()))
    with torch.device("meta"):
        shapes = Decoder(args).state_dict()
    sd = {k: torch.empty(v.shape, dtype=torch.float32) for k, v in shapes.items()
          if not (args.tie_embeddings and k == "lm_head.weight")}
    wrapped = {"model": sd}
    dcp.load(wrapped, checkpoint_id=str(step_dir / "model"))
    tok_dir = run_dir / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tok_dir) if tok_dir.is_dir() else None
    return export_state_dict(args, wrapped["model"], Path(out), tokenizer, DTYPES[dtype])
