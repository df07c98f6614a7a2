"""`cptrain export`: a run folder or committed checkpoint -> Hugging Face directory.

Reads DCP shards without a process group, so export runs on any machine with enough host memory,
whatever topology wrote the checkpoint.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from cptrain.checkpoint import MARKER, committed_steps
from cptrain.configtools import ConfigError, blocked_folder
from cptrain.models.decoder import Decoder
from cptrain.models.hf import export_family, export_hf
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
    path = path.expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory (give a run folder or its checkpoints/step-N)")
    if (path / MARKER).is_file():
        return path.parent.parent, path
    if path.parent.name == "checkpoints":
        _refuse_uncommitted(path)
    steps = committed_steps(path / "checkpoints")
    if not steps:
        raise ConfigError(f"{path}: neither a committed checkpoint (no {MARKER}) nor a run folder with one")
    return path, steps[-1]


def _refuse_uncommitted(step_dir: Path) -> None:
    """A step folder without its marker is a save that never finished: its shards may be partial."""
    done = [p.name for p in committed_steps(step_dir.parent)]
    hint = f"committed: {', '.join(done)}" if done else "the run has no committed step"
    raise ConfigError(f"{step_dir} is not a committed checkpoint (no {MARKER} marker: its save did not finish); "
                      f"{hint}")


def _check_out(out: Path, run_dir: Path, overwrite: bool = False) -> None:
    """OUT gets config.json and weight files: never a file, the run folder itself, its checkpoints or another
    run folder (a config.json there would make it look like a model, and the weights would sit among shards);
    nor, unless `overwrite`, a folder that holds anything (a model or project files there would be replaced);
    and it must be writable. All checked before the checkpoint is read."""
    resolved = out.expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise ConfigError(f"export OUT_DIR {out} is a file; give a directory (it is created if missing)")
    inside = resolved == run_dir or (run_dir / "checkpoints") in (resolved, *resolved.parents)
    if inside or (resolved / "config.resolved.toml").is_file() or (resolved / "checkpoints").is_dir():
        raise ConfigError(f"export OUT_DIR {out} is a run folder or inside its checkpoints; give a folder of its "
                          f"own, e.g. {run_dir / 'hf'}")
    blocked = blocked_folder(resolved)
    if blocked and blocked[1] == "file":
        raise ConfigError(f"export OUT_DIR {out}: {blocked[0]} is a file, so the folder cannot be created; give a "
                          "directory path")
    if blocked:
        raise ConfigError(f"export OUT_DIR {out}: {blocked[0]} is not writable (permission denied); give a folder "
                          "you can write to")
    held = sorted(p.name for p in resolved.iterdir()) if resolved.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise ConfigError(f"export OUT_DIR {out} is not empty (it holds {shown}); give a new or empty folder, or "
                          "add --overwrite to replace an earlier export there")


def export_run(path: str, out: str, dtype: str = "bf16", overwrite: bool = False) -> Path:
    import torch.distributed.checkpoint as dcp
    from transformers import AutoTokenizer

    run_dir, step_dir = _locate(Path(path))
    _check_out(Path(out), run_dir, overwrite)
    info = run_dir / "model_args.json"
    if not info.is_file():
        raise ConfigError(f"{info} is missing: export needs the run folder the checkpoint belongs to")
    args = ModelArgs(**json.loads(info.read_text()))
    export_family(args)  # a shape no HF architecture expresses: refused before the shards are read
    with torch.device("meta"):
        shapes = Decoder(args).state_dict()
    sd = {k: torch.empty(v.shape, dtype=torch.float32) for k, v in shapes.items()
          if not (args.tie_embeddings and k == "lm_head.weight")}
    wrapped = {"model": sd}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": the intended one-process read
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(wrapped, checkpoint_id=str(step_dir / "model"))
    tok_dir = run_dir / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tok_dir) if tok_dir.is_dir() else None
    return export_state_dict(args, wrapped["model"], Path(out), tokenizer, DTYPES[dtype])
