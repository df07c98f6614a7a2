"""Held-out loss and generation samples. Collective under FSDP: every rank calls these."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist

from cptrain.configtools import ConfigError
from cptrain.models.decoder import IGNORE_INDEX


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def heldout_loss(model, batches: list[dict], device: torch.device) -> dict:
    """Mean per-token loss over all held-out batches (every rank evaluates a share)."""
    was_training = model.training
    model.eval()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    mine = batches[rank::world]
    # FSDP forwards are collective: ranks with fewer batches run an all-ignored batch to stay in step
    rounds = math.ceil(len(batches) / world)
    for i in range(rounds):
        if i < len(mine):
            b = _to(mine[i], device)
        else:
            b = _to(batches[0], device)
            b["labels"] = torch.full_like(b["labels"], IGNORE_INDEX)
        loss_sum = model(b["input_ids"], b["position_ids"], b["document_ids"], b["labels"])
        total[0] += loss_sum.double()
        total[1] += (b["labels"] != IGNORE_INDEX).sum()
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train(was_training)
    loss = (total[0] / total[1].clamp(min=1)).item()
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(total[1].item())}


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, device: torch.device) -> str:
    """Greedy continuation (no KV cache: fine for short samples; deterministic across ranks)."""
    was_training = model.training
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    if ids.shape[1] == 0:  # the model cannot take an empty row (no BOS is added for SmolLM2 / Qwen)
        raise ConfigError(f"the prompt {prompt!r} is no tokens at all; give some text for the model to "
                          "continue")
    eos = tokenizer.eos_token_id
    for _ in range(max_new_tokens):
        logits = model(ids)[:, -1]
        nxt = logits.float().argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if eos is not None and nxt.item() == eos:
            break
    model.train(was_training)
    return tokenizer.decode(ids[0], skip_special_tokens=False)


def generate_from_path(model_path: str, prompt: str, max_new_tokens: int) -> str:
    """`cptrain generate`: load an HF directory / GGUF / builtin model on one device and sample."""
    from cptrain.models.hf import load_pretrained, load_tokenizer

    _refuse_run_folder(Path(model_path).expanduser())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_pretrained(model_path, device=device)
    return generate(model, load_tokenizer(model_path), prompt, max_new_tokens, device)


def _refuse_run_folder(path: Path) -> None:
    """A run folder (or one of its checkpoints/step-N) holds DCP shards, not a model transformers reads:
    point to its exported `hf/` or to `cptrain export` instead of "not a Hugging Face model directory"."""
    if not path.is_dir() or (path / "config.json").is_file():
        return
    if path.parent.name == "checkpoints":
        run = path.parent.parent
    elif (path / "config.resolved.toml").is_file() or (path / "checkpoints").is_dir():
        run = path
    else:
        return
    hf = run / "hf"
    if (hf / "config.json").is_file() and run == path:
        raise ConfigError(f"{path} is a cptrain run folder, not a model: generate from its exported model "
                          f"with `cptrain generate {hf} PROMPT`")
    kind = "run folder" if run == path else "checkpoint"
    raise ConfigError(f"{path} is a cptrain {kind}, not a model: export it first with "
                      f"`cptrain export {path} OUT`, then `cptrain generate OUT PROMPT`")
