"""Peer: a plain Hugging Face transformers training loop, optionally with Liger kernels.

LlamaForCausalLM built from the cptrain preset's LlamaConfig, random init, bf16 weights (so the fused
AdamW states are bf16 too), SDPA attention, optional gradient checkpointing, grad-norm clip 1.0,
random token ids below 49152 (the SmolLM2 vocab cptrain's bench data uses). Writes one JSON result.

    python3 benchmarks/peers/hf_loop.py --shape llama3.2-1b --gc --liger --result r.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared harness
harness = importlib.import_module("harness")

TOKEN_ID_LIMIT = 49152


def build_model(shape: str, liger: bool, gc: bool, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    from cptrain.models.hf import hf_config_from_args
    from cptrain.models.presets import get_preset

    config = hf_config_from_args(get_preset(shape), torch.bfloat16)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    if liger:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_llama
        except ImportError as e:
            raise ImportError("--liger needs liger-kernel: pip install liger-kernel") from e
        apply_liger_kernel_to_llama()  # patches the Llama classes: call before building the model
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    if gc:  # transformers >= 5.2x renamed gradient_checkpointing_enable; the image has 5.17
        enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
        enable({"use_reentrant": False})
    return model.train()


def run(ns: argparse.Namespace) -> dict:
    device = torch.device(ns.device)
    model = build_model(ns.shape, ns.liger, ns.gc, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    vocab = min(model.config.vocab_size, TOKEN_ID_LIMIT)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> float:
        ids = torch.randint(0, vocab, (ns.batch, ns.seq_len), device=device, generator=gen)
        loss = model(input_ids=ids, labels=ids).loss  # the model shifts labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = harness.time_steps(step, ns.warmup, ns.steps, sync)
    tokens_per_s = ns.batch * ns.seq_len / harness.median(times)
    result = {"status": "ok", "step_times_s": times, "losses": losses, "tokens_per_s": tokens_per_s,
              "tokens_per_s_per_gpu": tokens_per_s}
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / harness.GIB
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / harness.GIB
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama3.2-1b", help="a cptrain preset name")
    p.add_argument("--liger", action="store_true", help="apply_liger_kernel_to_llama before building")
    p.add_argument("--gc", action="store_true", help="gradient checkpointing on every decoder layer")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--result", type=Path, required=True, help="where to write the JSON result")
    ns = p.parse_args(argv)
    setting = {"liger": ns.liger, "gc": ns.gc, "shape": ns.shape, "seq_len": ns.seq_len, "batch": ns.batch}
    try:
        result = run(ns)
    except torch.OutOfMemoryError as e:
        result = {"status": "oom", "error": str(e).splitlines()[0]}
    except Exception as e:  # noqa: BLE001 - the table records the failure; the traceback goes to the log
        traceback.print_exc()
        result = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
    ns.result.write_text(json.dumps({**setting, **result}, indent=2) + "\n")
    print(f"[hf_loop] {json.dumps({k: v for k, v in result.items() if k not in ('step_times_s', 'losses')})}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
