"""Held-out loss and generation samples. Collective under FSDP: every rank calls these."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
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
def generate(model, tokenizer, prompt: str, max_new_tokens: int, device: torch.device, *,
             stop_ids: Iterable[int] = (), context: int | None = None) -> str:
    """Greedy continuation (no KV cache: fine for short samples; deterministic across ranks). It stops at the
    tokenizer's eos token, at the model config's eos ids (Llama 3 Instruct lists several, Qwen2.5 Instruct's
    differs from its tokenizer's) and at `stop_ids`; with `context`, a prompt that leaves no room in it is
    refused and the continuation ends where the context does."""
    was_training = model.training
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    if ids.shape[1] == 0:  # the model cannot take an empty row (no BOS is added for SmolLM2 / Qwen)
        raise ConfigError(f"the prompt {prompt!r} is no tokens at all; give some text for the model to "
                          "continue")
    if context is not None and ids.shape[1] >= context:
        raise ConfigError(f"the prompt is {ids.shape[1]} tokens, and the model's context "
                          f"(max_position_embeddings) is {context}: shorten the prompt to leave room for the "
                          "continuation")
    if context is not None:
        max_new_tokens = min(max_new_tokens, context - ids.shape[1])
    stop = _ids(tokenizer.eos_token_id) | _ids(getattr(getattr(model, "args", None), "eos_token_id", None))
    stop |= set(stop_ids)
    for _ in range(max_new_tokens):
        logits = model(ids)[:, -1]
        nxt = logits.float().argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if nxt.item() in stop:
            break
    model.train(was_training)
    return tokenizer.decode(ids[0], skip_special_tokens=False)


def _ids(value) -> set[int]:
    """eos ids as a set: configs give one id, a list of them, or none."""
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple)) else {int(value)}


def generate_from_path(model_path: str, prompt: str, max_new_tokens: int) -> str:
    """`cptrain generate`: load an HF directory / GGUF / builtin model on one device and sample."""
    from cptrain.models.hf import load_pretrained, load_tokenizer, resolve_model_path

    _check_model_argument(model_path)
    _refuse_run_folder(Path(model_path).expanduser())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_pretrained(model_path, device=device)
    tokenizer = load_tokenizer(model_path)
    ids = tokenizer(prompt)["input_ids"]
    context = model.args.max_seq_len
    if len(ids) + max_new_tokens > context and len(ids) < context:
        print(f"cptrain: note: the prompt is {len(ids)} tokens, so {context - len(ids)} new ones fill the model's "
              f"context of {context} (max_position_embeddings); stopping there", file=sys.stderr)
    # what transformers' own `generate` stops at beside config.json's ids (Qwen2.5 Instruct adds <|endoftext|>)
    path = resolve_model_path(model_path)
    stop = _ids(_generation_config(path).get("eos_token_id"))
    return generate(model, tokenizer, prompt, max_new_tokens, device, stop_ids=stop, context=context)


def _generation_config(path: Path) -> dict:
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file} is not valid JSON ({e}); fix or remove it") from None
    return raw if isinstance(raw, dict) else {}


def _check_model_argument(model_path: str) -> None:
    """What `cptrain generate` is given instead of a model: nothing, a preset name (a shape without weights), a
    path that does not exist, or one file of a model folder."""
    from cptrain.models.hf import BUILTIN_MODELS, folder_of_model_file
    from cptrain.models.presets import PRESETS

    what = "an HF directory (config.json + safetensors), a .gguf file or builtin:smollm2-135m"
    if not model_path.strip():
        raise ConfigError(f"generate: the model is empty; give {what}")
    if model_path.startswith("builtin:"):
        return
    path = Path(model_path).expanduser()
    if not path.exists():
        if model_path in PRESETS:
            builtin = f"builtin:{model_path}"
            weights = f" (its weights: {builtin})" if builtin in BUILTIN_MODELS else ""
            raise ConfigError(f"generate: {model_path!r} is a preset, a shape without weights{weights}; give {what}")
        raise ConfigError(f"generate: no model at {model_path!r} (no such file or directory); give {what}")
    folder = folder_of_model_file(path)
    if folder is not None:
        raise ConfigError(f"generate: {model_path} is one file of a model folder; give the folder: "
                          f"`cptrain generate {folder} PROMPT`")


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
